"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
against the OpenAPI schemas of real Kubernetes releases (kubernetes-validate, strict), the
ServiceMonitor against its CRD-derived schema, and the settings that must agree do agree
(probes vs server health services, grace period vs drain timeout, selectors vs pod labels,
HPA metric vs prometheus-adapter rule, ServerConfig vs the proto).

Run: .venv-tools/bin/python tests/deploy/k8s_test.py   (ctest: deploy.k8s)
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import unittest

import yaml

sys.path.insert(0, os.path.dirname(__file__))
import protos  # noqa: E402

ROOT = protos.ROOT
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["cpu", "gpu-h100"]
# The kubectl on the project's machines (1.32) and the newest release kubernetes-validate ships.
K8S_VERSIONS = ["1.32.0", None]
SCHEMAS = os.path.join(os.path.dirname(__file__), "schemas")
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.json"}

try:
    import jsonschema
    import kubernetes_validate
except ImportError as e:  # pragma: no cover
    sys.exit(f"{e}: run ./x setup (it installs tests/deploy/requirements.txt into .venv-tools)")


def kubectl():
    path = shutil.which("kubectl")
    if path is None:
        raise SystemExit("kubectl not found on PATH: the deployment checks need kubectl >= 1.27 "
                         "(built-in kustomize); it is part of the project's machine image")
    return path


_rendered = {}


def render(path):
    """The objects `kubectl kustomize path` renders (cached; callers deep-copy to mutate)."""
    if path not in _rendered:
        out = subprocess.run([kubectl(), "kustomize", path], check=True, capture_output=True, text=True)
        _rendered[path] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _rendered[path]


def by_kind(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if not found:
        raise AssertionError(f"no {kind} {name or ''} in the rendered overlay")
    return found


def flag(args, name):
    i = args.index(name)
    return args[i + 1]


def validate_object(doc, version):
    """Raises on a schema violation; CRDs use their own schema."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        with open(os.path.join(SCHEMAS, CRD_SCHEMAS[key])) as f:
            jsonschema.validate(doc, json.load(f))
        return
    kubernetes_validate.validate(doc, version or kubernetes_validate.latest_version(), strict=True)


class RenderAndValidate(unittest.TestCase):
    def test_validator_rejects_a_broken_deployment(self):
        # The validator must be able to fail, or the checks below prove nothing.
        dep = copy.deepcopy(by_kind(render(os.path.join(K8S, "overlays", "cpu")), "Deployment")[0])
        dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
        with self.assertRaises(kubernetes_validate.ValidationError):
            validate_object(dep, "1.32.0")
        dep = copy.deepcopy(by_kind(render(os.path.join(K8S, "overlays", "cpu")), "Deployment")[0])
        dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
        with self.assertRaises(kubernetes_validate.ValidationError):
            validate_object(dep, "1.32.0")
        sm = copy.deepcopy(by_kind(render(os.path.join(K8S, "overlays", "cpu")), "ServiceMonitor")[0])
        sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
        with self.assertRaises(jsonschema.ValidationError):
            validate_object(sm, None)

    def test_every_overlay_renders_and_validates(self):
        for overlay in OVERLAYS:
            docs = render(os.path.join(K8S, "overlays", overlay))
            kinds = sorted(d["kind"] for d in docs)
            self.assertEqual(kinds, sorted([
                "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "NetworkPolicy",
                "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "Service", "ServiceMonitor"]),
                overlay)
            for doc in docs:
                for version in K8S_VERSIONS:
                    with self.subTest(overlay=overlay, kind=doc["kind"], name=doc["metadata"]["name"],
                                      version=version or "latest"):
                        validate_object(doc, version)
                if doc["kind"] != "Namespace":
                    self.assertEqual(doc["metadata"].get("namespace"), "fluxserve", doc["kind"])

    def test_adapter_config_renders_and_validates(self):
        docs = render(os.path.join(ROOT, "deploy", "prometheus-adapter"))
        self.assertEqual([(d["kind"], d["metadata"]["name"]) for d in docs], [("ConfigMap", "adapter-config")])
        for version in K8S_VERSIONS:
            validate_object(docs[0], version)
        rules = yaml.safe_load(docs[0]["data"]["config.yaml"])["rules"]
        self.assertEqual(len(rules), 1)


class Semantics(unittest.TestCase):
    def setUp(self):
        self.docs = {o: render(os.path.join(K8S, "overlays", o)) for o in OVERLAYS}

    def container(self, overlay):
        dep = by_kind(self.docs[overlay], "Deployment", "fluxserve")[0]
        return dep, dep["spec"]["template"]["spec"], dep["spec"]["template"]["spec"]["containers"][0]

    def test_probes_use_the_servers_health_services(self):
        for overlay in OVERLAYS:
            _, _, c = self.container(overlay)
            grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            self.assertEqual(flag(c["args"], "--listen"), f"0.0.0.0:{grpc_port}")
            self.assertEqual(flag(c["args"], "--metrics-listen"),
                             f"0.0.0.0:{next(p['containerPort'] for p in c['ports'] if p['name'] == 'metrics')}")
            self.assertEqual(c["startupProbe"]["grpc"], {"port": grpc_port, "service": "readiness"})
            self.assertEqual(c["readinessProbe"]["grpc"], {"port": grpc_port, "service": "readiness"})
            self.assertEqual(c["livenessProbe"]["grpc"], {"port": grpc_port, "service": "liveness"})
            budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
            self.assertGreaterEqual(budget, 600, f"{overlay}: startup budget {budget} s")
        _, _, gpu = self.container("gpu-h100")
        self.assertGreaterEqual(gpu["startupProbe"]["periodSeconds"] * gpu["startupProbe"]["failureThreshold"], 900,
                                "FLUX.1-dev load and quantization need at least 15 minutes of startup budget")

    def test_grace_period_covers_prestop_and_drain(self):
        for overlay in OVERLAYS:
            _, spec, c = self.container(overlay)
            cmd = c["lifecycle"]["preStop"]["exec"]["command"]
            self.assertEqual(cmd[0], "/bin/sleep")
            pre_stop = float(cmd[1])
            drain = float(flag(c["args"], "--drain-timeout"))
            grace = spec["terminationGracePeriodSeconds"]
            self.assertGreaterEqual(grace, pre_stop + drain + 5,
                                    f"{overlay}: grace {grace} < preStop {pre_stop} + drain {drain} + 5")
            self.assertLessEqual(grace, pre_stop + drain + 30, f"{overlay}: grace far beyond the drain")

    def test_security_context(self):
        for overlay in OVERLAYS:
            _, spec, c = self.container(overlay)
            self.assertTrue(spec["securityContext"]["runAsNonRoot"])
            self.assertNotEqual(spec["securityContext"]["runAsUser"], 0)
            self.assertEqual(spec["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
            sc = c["securityContext"]
            self.assertIs(sc["readOnlyRootFilesystem"], True)
            self.assertIs(sc["allowPrivilegeEscalation"], False)
            self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
            self.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"})
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            self.assertIn("/tmp", mounts)
            self.assertIn("/opt/fluxserve/models/cache", mounts)
            self.assertEqual(flag(c["args"], "--model-root"), "/opt/fluxserve/models")
            ns = by_kind(self.docs[overlay], "Namespace")[0]
            self.assertEqual(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted")

    def test_gpu_only_in_the_gpu_overlay(self):
        _, spec, c = self.container("gpu-h100")
        self.assertEqual(str(c["resources"]["limits"]["nvidia.com/gpu"]), "1")
        self.assertEqual(by_kind(self.docs["gpu-h100"], "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
                         ["image"], "fluxserve:cuda")
        self.assertIn("nvidia.com/gpu", [t["key"] for t in spec["tolerations"]])
        _, _, cpu = self.container("cpu")
        self.assertNotIn("nvidia.com/gpu", cpu["resources"].get("limits", {}))
        self.assertEqual(cpu["image"], "fluxserve:cpu")

    def test_selectors_match_the_pods(self):
        for overlay in OVERLAYS:
            docs = self.docs[overlay]
            dep, _, c = self.container(overlay)
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]

            def matches(sel):
                return sel and all(pod_labels.get(k) == v for k, v in sel.items())

            self.assertTrue(matches(dep["spec"]["selector"]["matchLabels"]))
            for svc in by_kind(docs, "Service"):
                self.assertTrue(matches(svc["spec"]["selector"]), svc["metadata"]["name"])
                for p in svc["spec"]["ports"]:
                    self.assertIn(p["targetPort"], [q["name"] for q in c["ports"]])
            self.assertTrue(matches(by_kind(docs, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"]))
            self.assertTrue(matches(by_kind(docs, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"]))
            headless = by_kind(docs, "Service", "fluxserve-headless")[0]
            self.assertEqual(headless["spec"]["clusterIP"], "None")
            # The ServiceMonitor must see exactly one Service with a metrics port, or every pod
            # is scraped twice and every sum() doubles.
            sm = by_kind(docs, "ServiceMonitor")[0]
            port = sm["spec"]["endpoints"][0]["port"]
            scraped = [s["metadata"]["name"] for s in by_kind(docs, "Service")
                       if all(s["metadata"].get("labels", {}).get(k) == v
                              for k, v in sm["spec"]["selector"]["matchLabels"].items())
                       and port in [p["name"] for p in s["spec"]["ports"]]]
            self.assertEqual(scraped, ["fluxserve"])
            hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
            self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"])
            self.assertNotIn("replicas", dep["spec"], "the HPA owns the replica count")
            pvc = by_kind(docs, "PersistentVolumeClaim")[0]
            vols = dep["spec"]["template"]["spec"]["volumes"]
            self.assertIn(pvc["metadata"]["name"],
                          [v["persistentVolumeClaim"]["claimName"] for v in vols if "persistentVolumeClaim" in v])
            cm = by_kind(docs, "ConfigMap")[0]
            self.assertIn(cm["metadata"]["name"], [v["configMap"]["name"] for v in vols if "configMap" in v])

    def test_hpa_metric_is_served_by_the_adapter_rule(self):
        with open(os.path.join(ROOT, "deploy", "prometheus-adapter", "config.yaml")) as f:
            adapter = yaml.safe_load(f)
        served = {r["name"]["as"] for r in adapter["rules"]}
        for overlay in OVERLAYS:
            hpa = by_kind(self.docs[overlay], "HorizontalPodAutoscaler")[0]
            for m in hpa["spec"]["metrics"]:
                self.assertEqual(m["type"], "Pods")
                self.assertIn(m["pods"]["metric"]["name"], served)
        for r in adapter["rules"]:
            self.assertEqual(set(r["resources"]["overrides"]), {"namespace", "pod"})

    def test_server_config_is_a_valid_ServerConfig(self):
        from google.protobuf import json_format
        spec = protos.load()["model_spec"]
        for overlay in OVERLAYS:
            cm = by_kind(self.docs[overlay], "ConfigMap")[0]
            _, _, c = self.container(overlay)
            self.assertEqual(flag(c["args"], "--config"), "/etc/fluxserve/server.json")
            cfg = json_format.Parse(cm["data"]["server.json"], spec.ServerConfig())  # unknown fields raise
            self.assertGreaterEqual(len(cfg.models), 1)
            self.assertIn(cfg.default_model, [m.name for m in cfg.models])
            for m in cfg.models:
                self.assertFalse(m.path.startswith("/") or ".." in m.path.split("/"), m.path)
        gpu = json_format.Parse(by_kind(self.docs["gpu-h100"], "ConfigMap")[0]["data"]["server.json"],
                                spec.ServerConfig())
        self.assertTrue(gpu.models[0].path.startswith("cache/"), "FLUX.1-dev lives on the model-cache volume")
        self.assertEqual(gpu.models[0].placement.device_map, "cuda")
        with self.assertRaises(json_format.ParseError):
            json_format.Parse('{"models": [{"name": "x", "pth": "y"}]}', spec.ServerConfig())


if __name__ == "__main__":
    unittest.main(verbosity=2)
