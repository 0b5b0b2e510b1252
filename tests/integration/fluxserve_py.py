"""Shared by the Python integration tests: starts `fluxserve serve` on loopback (as the C++ fixture
does: private model root, port files, --threads 1) and builds calls from the generated messages
with plain grpcio (channel.unary_unary / unary_stream), so no grpc_tools are needed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def setup_path(pydir: str) -> None:
    sys.path.insert(0, pydir)


class Server:
    def __init__(self, fluxserve: str, models_dir: str, extra_args: list[str] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="fluxserve_py_"))
        root = self.dir / "models"
        shutil.copytree(Path(models_dir) / "tiny-flux", root / "tiny-flux")
        (self.dir / "config.json").write_text(
            '{"models": [{"name": "tiny-flux", "path": "tiny-flux"}]}')
        args = [fluxserve, "serve", "--listen", "127.0.0.1:0", "--port-file",
                str(self.dir / "port"), "--metrics-listen", "127.0.0.1:0",
                "--metrics-port-file", str(self.dir / "metrics_port"), "--model-root", str(root),
                "--config", str(self.dir / "config.json"), "--threads", "1"] + (extra_args or [])
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            self.port = _read_port(self.dir / "port")
            self.metrics_port = _read_port(self.dir / "metrics_port")
            if self.port and self.metrics_port:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"fluxserve exited {self.proc.returncode}:\n{self.log_text()}")
            if time.time() > deadline:
                raise RuntimeError(f"no port file:\n{self.log_text()}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self.log.flush()
        return (self.dir / "server.log").read_text(errors="replace")

    def stop(self, timeout: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if not os.environ.get("FLUXSERVE_KEEP_TEST_DIRS"):
            shutil.rmtree(self.dir, ignore_errors=True)


def _read_port(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def unary_unary(channel, method: str, response_type):
    return channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)


def unary_stream(channel, method: str, response_type):
    return channel.unary_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=response_type.FromString)


def stream_stream(channel, method: str, response_type):
    return channel.stream_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=response_type.FromString)
