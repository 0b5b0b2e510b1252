"""Python classes for proto/fluxserve/v1 and grpc.health.v1, generated at test time.

protoc (Debian's protobuf-compiler, installed by ./x setup) writes the *_pb2 modules into a
temporary directory; the messages are then used with plain grpcio channels, so no grpc_tools
or generated service stubs are needed.
"""
import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_ROOT = os.path.join(ROOT, "proto")
_FILES = [
    "fluxserve/v1/model_spec.proto",
    "fluxserve/v1/image_service.proto",
    "fluxserve/v1/model_service.proto",
]
# health.proto is compiled from a copy under another directory: a generated `grpc.health`
# module would be shadowed by the grpcio package (`grpc`). The proto package, and so the
# service name grpc.health.v1.Health, stays the same.
_HEALTH = "grpc/health/v1/health.proto"
_HEALTH_COPY = "fluxserve_test_health/health.proto"
_loaded = {}


def load():
    """Returns {"model_spec": module, "image_service": ..., "model_service": ..., "health": ...}."""
    if _loaded:
        return _loaded
    protoc = shutil.which("protoc")
    if protoc is None:
        sys.exit("protoc not found: run ./x setup (protobuf-compiler)")
    out = tempfile.mkdtemp(prefix="fluxserve-pb2-")
    atexit.register(shutil.rmtree, out, True)
    src = os.path.join(out, "src")
    os.makedirs(os.path.join(src, os.path.dirname(_HEALTH_COPY)))
    shutil.copy(os.path.join(PROTO_ROOT, _HEALTH), os.path.join(src, _HEALTH_COPY))
    subprocess.run([protoc, f"--proto_path={PROTO_ROOT}", f"--proto_path={src}", f"--python_out={out}",
                    *_FILES, _HEALTH_COPY], check=True)
    sys.path.insert(0, out)
    for f in _FILES + [_HEALTH_COPY]:
        mod = f[:-len(".proto")].replace("/", ".") + "_pb2"
        _loaded[os.path.basename(f)[:-len(".proto")]] = importlib.import_module(mod)
    return _loaded
