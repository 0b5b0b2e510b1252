"""The monitoring config against a real server and a real Prometheus.

Starts `fluxserve serve` the way the cpu overlay's Deployment does (its rendered args and
ServerConfig, the image's /opt/fluxserve layout in a temp dir, loopback ports), sends known
traffic with a grpcio client (3 good generations, bad requests, a swap, a failed load), then:
  - every metric name used by the Prometheus rules, the Grafana dashboard, the HPA and the
    prometheus-adapter rule is in the server's /metrics (or is documented as coming from
    elsewhere), and every label value they select on is one server/README.md lists;
  - a real Prometheus (Debian's /usr/bin/prometheus, 1 s scrapes, the rules loaded) scraping the
    server answers `fluxserve_request_duration_seconds_count` with exactly the traffic sent;
  - every dashboard query, the adapter's metricsQuery and every rule evaluate without error
    on real data;
  - SIGTERM drains and exits 0, as the Deployment's preStop/grace budget assumes.

Run: .venv-tools/bin/python tests/deploy/live_test.py BUILD/fluxserve   (ctest: deploy.live)
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(__file__))
import protos  # noqa: E402

ROOT = protos.ROOT
FLUXSERVE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else \
    os.path.join(ROOT, "build", "fluxserve")
sys.argv = sys.argv[:1] + [a for a in sys.argv[1:] if a.startswith("-")]

GOOD_REQUESTS = 3
POD = {"namespace": "fluxserve", "pod": "fluxserve-test-0"}
# Metrics the rules use that fluxserve does not export, and why.
EXTERNAL = {
    "kube_pod_container_resource_limits": "kube-state-metrics (FluxserveMemoryNearLimit)",
}
# Exported only by CUDA builds with a GPU; they must at least be in the documented contract.
GPU_ONLY = {"fluxserve_gpu_memory_used_bytes", "fluxserve_gpu_memory_total_bytes"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except AssertionError:
            raise  # a definite failure (e.g. the server exited): no point waiting
        except Exception as e:  # noqa: BLE001 (retried until the deadline)
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last})")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


# ---- what the config files use ---------------------------------------------------------------

def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr):
    """Metric names in a PromQL expression (not recording rules, functions, labels or keywords)."""
    names = set()
    for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", strip_strings(expr)):
        if ":" in tok:
            continue
        if tok.startswith(("fluxserve_", "process_")) or tok in EXTERNAL:
            names.add(tok)
    return names


def selectors(expr):
    """(metric, label, op, value) for every matcher on a fluxserve metric."""
    out = []
    for metric, body in re.findall(r"\b(fluxserve_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'([a-zA-Z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            out.append((metric, label, op, value))
    return out


def rule_exprs():
    exprs = {}
    for f in sorted(glob.glob(os.path.join(ROOT, "deploy", "prometheus", "rules", "*.yaml"))):
        with open(f) as fh:
            for g in yaml.safe_load(fh)["groups"]:
                for r in g["rules"]:
                    exprs[r.get("record") or r.get("alert")] = r["expr"]
    return exprs


def dashboard():
    with open(os.path.join(ROOT, "deploy", "grafana", "fluxserve-dashboard.json")) as f:
        return json.load(f)


def dashboard_exprs():
    d = dashboard()
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def grafana_to_promql(expr):
    return (expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$model", ".*")
            .replace("$pod", ".*"))


def adapter_rules():
    with open(os.path.join(ROOT, "deploy", "prometheus-adapter", "config.yaml")) as f:
        return yaml.safe_load(f)["rules"]


def contract():
    """{metric: {label: [values] or None}} from the table in server/README.md."""
    with open(os.path.join(ROOT, "server", "README.md")) as f:
        text = f.read()
    table = text.split("## Metrics", 1)[1]
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        labels = {}
        for m in re.finditer(r"([a-z_]+)(?: \(([^)]*)\))?", cells[2]):
            if m.group(1) in ("cuda", "builds"):
                continue
            values = [v.strip() for v in m.group(2).split(",")] if m.group(2) else None
            labels[m.group(1)] = None if values and values[0].startswith("CUDA") else values
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            out[name] = labels
    return out


def family(sample_name):
    for suffix in ("_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def parse_exposition(text):
    """(sample names, {family: type}, [(name, {labels})])"""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            labels = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            samples.append((m.group(1), labels))
    return {s for s, _ in samples}, types, samples


# ---- the server and Prometheus --------------------------------------------------------------

class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(FLUXSERVE):
            raise SystemExit(f"{FLUXSERVE} does not exist: build it first (./x build)")
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            raise SystemExit("prometheus not found: run ./x setup (Debian package prometheus)")
        cls.tmp = tempfile.mkdtemp(prefix="fluxserve-live-")
        cls.procs = []
        cls.pb = protos.load()
        try:
            cls._start_prometheus(prometheus)
            cls._start_server()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def _start_server(cls):
        import grpc
        # The image's layout: the binary with models/tiny-flux beside it, an empty cache.
        opt = os.path.join(cls.tmp, "opt", "fluxserve")
        os.makedirs(os.path.join(opt, "models", "cache"))
        shutil.copy2(FLUXSERVE, os.path.join(opt, "fluxserve"))
        shutil.copytree(os.path.join(ROOT, "models", "tiny-flux"), os.path.join(opt, "models", "tiny-flux"))
        # The cpu overlay's Deployment args and ServerConfig, with loopback ports.
        out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy", "k8s", "overlays", "cpu")],
                             check=True, capture_output=True, text=True).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
        config = os.path.join(cls.tmp, "server.json")
        with open(config, "w") as f:
            f.write(cm["data"]["server.json"])
        args = list(container["args"])
        cls.port_file = os.path.join(cls.tmp, "grpc.port")
        cls.metrics_port_file = os.path.join(cls.tmp, "metrics.port")
        overrides = {"--config": config, "--model-root": os.path.join(opt, "models"),
                     "--listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0", "--threads": "2"}
        for i, a in enumerate(args):
            if a in overrides:
                args[i + 1] = overrides[a]
        cls.drain_timeout = float(args[args.index("--drain-timeout") + 1])
        args += ["--port-file", cls.port_file, "--metrics-port-file", cls.metrics_port_file]
        cls.server_log = open(os.path.join(cls.tmp, "server.log"), "w")
        cls.server = subprocess.Popen([os.path.join(opt, "fluxserve"), *args], cwd=cls.tmp,
                                      stdout=cls.server_log, stderr=subprocess.STDOUT)
        cls.procs.append(cls.server)

        def port(path):
            assert cls.server.poll() is None, f"fluxserve exited with {cls.server.returncode}: {cls.log()}"
            with open(path) as f:
                return int(f.read().strip() or "0")

        cls.grpc_port = wait_for("the gRPC port file", lambda: port(cls.port_file), 30)
        cls.metrics_port = wait_for("the metrics port file", lambda: port(cls.metrics_port_file), 30)
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.grpc_port}")
        h = cls.pb["health"]
        cls.check = cls.channel.unary_unary("/grpc.health.v1.Health/Check",
                                            request_serializer=h.HealthCheckRequest.SerializeToString,
                                            response_deserializer=h.HealthCheckResponse.FromString)
        wait_for("readiness SERVING", lambda: cls.health("readiness") == "SERVING", 60)
        cls._send_traffic()
        # The Prometheus target now scrapes a server with known traffic.
        with open(cls.prom_targets, "w") as f:
            json.dump([{"targets": [f"127.0.0.1:{cls.metrics_port}"], "labels": POD}], f)

    @classmethod
    def log(cls):
        cls.server_log.flush()
        with open(cls.server_log.name) as f:
            return f.read()[-4000:]

    @classmethod
    def health(cls, service):
        h = cls.pb["health"]
        r = cls.check(h.HealthCheckRequest(service=service), timeout=5)
        return h.HealthCheckResponse.ServingStatus.Name(r.status)

    @classmethod
    def _send_traffic(cls):
        import grpc
        img, ms, spec = cls.pb["image_service"], cls.pb["model_service"], cls.pb["model_spec"]
        generate = cls.channel.unary_stream("/fluxserve.v1.ImageService/Generate",
                                            request_serializer=img.GenerateRequest.SerializeToString,
                                            response_deserializer=img.GenerateResponse.FromString)
        cls.results = []
        for seed in range(GOOD_REQUESTS):
            req = img.GenerateRequest(prompt=f"a red fox {seed}", width=64, height=64, num_inference_steps=2,
                                      seed=seed)
            last = None
            for resp in generate(req, timeout=120):
                last = resp
            assert last is not None and last.WhichOneof("event") == "result", last
            cls.results.append(last.result)
        cls.bad_codes = []
        for req in (img.GenerateRequest(prompt="x", num_inference_steps=0, width=64, height=64),
                    img.GenerateRequest(model="no-such-model", prompt="x", width=64, height=64)):
            try:
                for _ in generate(req, timeout=30):
                    pass
                cls.bad_codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                cls.bad_codes.append(e.code())
        swap = cls.channel.unary_unary("/fluxserve.v1.ModelService/SwapModel",
                                       request_serializer=ms.SwapModelRequest.SerializeToString,
                                       response_deserializer=ms.SwapModelResponse.FromString)
        cls.swap = swap(ms.SwapModelRequest(name="tiny-flux", spec=spec.ModelSpec(name="tiny-flux", path="tiny-flux")),
                        timeout=120)
        load = cls.channel.unary_unary("/fluxserve.v1.ModelService/LoadModel",
                                       request_serializer=ms.LoadModelRequest.SerializeToString,
                                       response_deserializer=ms.ModelInfo.FromString)
        try:
            load(ms.LoadModelRequest(spec=spec.ModelSpec(name="broken", path="cache/missing")), timeout=60)
            cls.failed_load = grpc.StatusCode.OK
        except grpc.RpcError as e:
            cls.failed_load = e.code()
        cls.metrics_text = http_get(f"http://127.0.0.1:{cls.metrics_port}/metrics")

    @classmethod
    def _start_prometheus(cls, prometheus):
        # Rules as shipped, but evaluated every second (a group's own interval would make the
        # first evaluation wait up to 30 s).
        rules_dir = os.path.join(cls.tmp, "rules")
        os.makedirs(rules_dir)
        for f in glob.glob(os.path.join(ROOT, "deploy", "prometheus", "rules", "*.yaml")):
            with open(f) as fh:
                doc = yaml.safe_load(fh)
            for g in doc["groups"]:
                g.pop("interval", None)
            with open(os.path.join(rules_dir, os.path.basename(f)), "w") as fh:
                yaml.safe_dump(doc, fh)
        cls.prom_targets = os.path.join(cls.tmp, "targets.json")
        with open(cls.prom_targets, "w") as f:
            json.dump([], f)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [os.path.join(rules_dir, "*.yaml")],
            "scrape_configs": [{"job_name": "fluxserve",
                                "file_sd_configs": [{"files": [cls.prom_targets], "refresh_interval": "1s"}]}],
        }
        with open(os.path.join(cls.tmp, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        cls.prom_port = free_port()
        cls.prom_log = open(os.path.join(cls.tmp, "prometheus.log"), "w")
        cls.prom = subprocess.Popen(
            [prometheus, f"--config.file={os.path.join(cls.tmp, 'prometheus.yml')}",
             f"--storage.tsdb.path={os.path.join(cls.tmp, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{cls.prom_port}"],
            stdout=cls.prom_log, stderr=subprocess.STDOUT)
        cls.procs.append(cls.prom)

    def promql(self, expr):
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: {e.read().decode()}") from None
        self.assertEqual(body["status"], "success", expr)
        return body["data"]["result"]

    def wait_scraped(self):
        wait_for("Prometheus to be ready", lambda: http_get(f"http://127.0.0.1:{self.prom_port}/-/ready"), 30)
        return wait_for(f"{GOOD_REQUESTS} ok requests in Prometheus",
                        lambda: [r for r in self.promql(
                            'sum(fluxserve_request_duration_seconds_count{outcome="ok"})')
                            if float(r["value"][1]) == GOOD_REQUESTS], 30)

    # ---- the tests ------------------------------------------------------------------------

    def test_1_traffic_went_as_sent(self):
        self.assertEqual(len(self.results), GOOD_REQUESTS)
        for seed, r in enumerate(self.results):
            self.assertEqual(r.seed, seed)
            self.assertEqual((r.width, r.height), (64, 64))
            self.assertEqual(len(r.images), 1)
            self.assertTrue(r.images[0].data.startswith(b"\x89PNG"))
        self.assertNotIn(__import__("grpc").StatusCode.OK, self.bad_codes)
        self.assertNotEqual(self.failed_load, __import__("grpc").StatusCode.OK)
        self.assertEqual(self.swap.model.name, "tiny-flux")
        for service in ("", "readiness", "liveness"):
            self.assertEqual(self.health(service), "SERVING", service)

    def test_2_exposition_counts_the_traffic(self):
        names, types, samples = parse_exposition(self.metrics_text)
        ok = sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics_text.splitlines()
                 if line.startswith("fluxserve_request_duration_seconds_count{") and 'outcome="ok"' in line)
        self.assertEqual(ok, GOOD_REQUESTS)
        self.assertEqual(types.get("fluxserve_request_duration_seconds"), "histogram")
        # The SLO rules select on le="50": the bucket must exist with exactly that spelling.
        les = {lab.get("le") for n, lab in samples if n == "fluxserve_request_duration_seconds_bucket"}
        self.assertIn("50", les, f"le values: {sorted(les)}")

    def test_3_every_metric_used_is_exported(self):
        names, types, samples = parse_exposition(self.metrics_text)
        documented = contract()
        used = {}
        for name, expr in rule_exprs().items():
            for m in metric_names(expr):
                used.setdefault(m, set()).add(f"rule {name}")
        for title, expr in dashboard_exprs():
            for m in metric_names(expr):
                used.setdefault(m, set()).add(f"dashboard panel '{title}'")
        for v in dashboard()["templating"]["list"]:
            if v["type"] == "query":
                for m in metric_names(v["query"]["query"]):
                    used.setdefault(m, set()).add(f"dashboard variable {v['name']}")
        for r in adapter_rules():
            for m in metric_names(r["seriesQuery"]) | {r["name"]["as"]}:
                used.setdefault(m, set()).add("prometheus-adapter rule")
        for overlay in ("cpu", "gpu-h100"):
            out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy", "k8s", "overlays", overlay)],
                                 check=True, capture_output=True, text=True).stdout
            hpa = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "HorizontalPodAutoscaler")
            for m in hpa["spec"]["metrics"]:
                used.setdefault(m["pods"]["metric"]["name"], set()).add(f"HPA ({overlay})")
        self.assertGreaterEqual(len(used), 15, sorted(used))
        missing = []
        for m, where in sorted(used.items()):
            if m in EXTERNAL:
                continue
            self.assertIn(family(m), documented, f"{m} (used by {sorted(where)}) is not in server/README.md")
            if m in GPU_ONLY:
                continue
            if m not in names and m not in types:
                missing.append(f"{m} (used by {', '.join(sorted(where))})")
        self.assertEqual(missing, [], "metrics used but not in /metrics of a running server")

    def test_4_selected_label_values_exist(self):
        names, types, samples = parse_exposition(self.metrics_text)
        documented = contract()
        exprs = list(rule_exprs().values()) + [e for _, e in dashboard_exprs()]
        checked = 0
        for expr in exprs:
            for metric, label, op, value in selectors(expr):
                if value.startswith("$") or label in ("namespace", "pod"):
                    continue
                labels = documented[family(metric)]
                if label == "le":
                    les = {lab.get("le") for n, lab in samples if n == metric}
                    self.assertIn(value, les, f'{metric}{{le="{value}"}}: no such bucket')
                    checked += 1
                    continue
                self.assertIn(label, labels, f"{metric} has no label {label} in server/README.md")
                if op == "=" and labels[label] is not None:
                    self.assertIn(value, labels[label], f'{metric}{{{label}="{value}"}}: not a documented value')
                    checked += 1
                if op == "=~" and labels[label] is not None:
                    for v in value.split("|"):
                        self.assertIn(v, labels[label], f'{metric}{{{label}=~"{value}"}}')
                    checked += 1
                # and the live exposition agrees with the README on the label itself
                live = {k for n, lab in samples if family(n) == family(metric) for k in lab}
                if live:
                    self.assertIn(label, live, f"{metric}: label {label} not exported")
        self.assertGreaterEqual(checked, 10)

    def test_5_prometheus_scrapes_the_count(self):
        self.wait_scraped()
        ok = self.promql('sum(fluxserve_request_duration_seconds_count{outcome="ok"})')
        self.assertEqual(float(ok[0]["value"][1]), GOOD_REQUESTS)
        by_model = self.promql('sum by (model) (fluxserve_requests_total{outcome="ok"})')
        self.assertEqual([(r["metric"]["model"], float(r["value"][1])) for r in by_model],
                         [("tiny-flux", GOOD_REQUESTS)])
        up = self.promql('up{job="fluxserve"}')
        self.assertEqual(float(up[0]["value"][1]), 1.0)
        self.assertEqual(up[0]["metric"]["pod"], POD["pod"])

    def test_6_dashboard_and_adapter_queries_run_on_real_data(self):
        self.wait_scraped()
        time.sleep(2)  # a few more scrapes, so rate() over 1m has two points
        empty = []
        for title, expr in dashboard_exprs():
            result = self.promql(grafana_to_promql(expr))
            if not result and not (metric_names(expr) & GPU_ONLY):
                empty.append(f"{title}: {expr}")
        self.assertEqual(empty, [], "dashboard queries with no data from a server that served traffic")
        for v in dashboard()["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"]["query"])
            self.assertIsNotNone(m, v["query"]["query"])
            url = (f"http://127.0.0.1:{self.prom_port}/api/v1/label/{m.group(2)}/values?"
                   + urllib.parse.urlencode({"match[]": grafana_to_promql(m.group(1))}))
            self.assertTrue(json.loads(http_get(url))["data"], f"variable {v['name']} has no values")
        for r in adapter_rules():
            series = json.loads(http_get(f"http://127.0.0.1:{self.prom_port}/api/v1/series?"
                                         + urllib.parse.urlencode({"match[]": r["seriesQuery"]})))["data"]
            self.assertEqual(len(series), 1, r["seriesQuery"])
            name = series[0]["__name__"]
            self.assertRegex(name, r["name"]["matches"])
            q = (r["metricsQuery"].replace("<<.Series>>", name)
                 .replace("<<.LabelMatchers>>", f'namespace="{POD["namespace"]}",pod=~"{POD["pod"]}"')
                 .replace("<<.GroupBy>>", "pod"))
            result = self.promql(q)
            self.assertEqual([(x["metric"], float(x["value"][1])) for x in result], [({"pod": POD["pod"]}, 0.0)],
                             f"adapter query {q}: an idle server has an empty queue")

    def test_7_rules_evaluate_cleanly(self):
        self.wait_scraped()

        def evaluated():
            groups = json.loads(http_get(f"http://127.0.0.1:{self.prom_port}/api/v1/rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") and
                                          not r["lastEvaluation"].startswith("0001") for r in rules) else None

        rules = wait_for("every rule evaluated", evaluated, 20)
        self.assertEqual(len(rules), len(rule_exprs()))
        bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
        self.assertEqual(bad, [])
        rate = wait_for("model:fluxserve_requests:rate5m", lambda: self.promql("model:fluxserve_requests:rate5m"), 10)
        # One series per model label: the served model, plus "(unknown)" where the server counts
        # requests that named no loaded model (the label stays bounded whatever clients send).
        by_model = {r["metric"].get("model"): r["metric"] for r in rate}
        self.assertIn("tiny-flux", by_model)
        self.assertEqual(by_model["tiny-flux"], {"__name__": "model:fluxserve_requests:rate5m", "model": "tiny-flux",
                                                 "namespace": POD["namespace"]})
        self.assertLessEqual(set(by_model), {"tiny-flux", "(unknown)"})
        # A healthy server raises no alert, except that the deliberately failed LoadModel may
        # leave a FAILED model behind, which FluxserveModelFailed must then see.
        _, _, samples = parse_exposition(self.metrics_text)
        failed = sorted(lab["model"] for n, lab in samples
                        if n == "fluxserve_model_state" and lab.get("state") == "failed")
        failed_values = [float(line.rsplit(" ", 1)[1]) for line in self.metrics_text.splitlines()
                         if line.startswith("fluxserve_model_state{") and 'state="failed"' in line]
        expected = ["FluxserveModelFailed"] if any(v == 1 for v in failed_values) else []

        def active_alerts():
            groups = json.loads(http_get(f"http://127.0.0.1:{self.prom_port}/api/v1/rules?type=alert"))
            return sorted({r["name"] for g in groups["data"]["groups"] for r in g["rules"]
                           if r["state"] != "inactive"})

        deadline = time.monotonic() + 5
        while active_alerts() != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual(active_alerts(), expected, f"failed models: {failed}")

    def test_8_sigterm_drains_and_exits_zero(self):
        self.wait_scraped()
        t0 = time.monotonic()
        self.server.send_signal(signal.SIGTERM)
        rc = self.server.wait(timeout=self.drain_timeout + 5)
        self.assertEqual(rc, 0, self.log())
        self.assertLess(time.monotonic() - t0, 10, "an idle server should not use its drain budget")


if __name__ == "__main__":
    unittest.main(verbosity=2)
