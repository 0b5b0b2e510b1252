"""Helpers shared by the bench scripts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_RE = re.compile(r"^RESULT\b(.*)$")


def parse_result(text: str, required: str) -> dict:
    """Parses the last `RESULT key=value ...` line of fluxserve's output (values as float when
    they parse); `required` names a key that must be present."""
    found = None
    for line in text.splitlines():
        m = RESULT_RE.match(line.strip())
        if m:
            found = m.group(1)
    if found is None:
        raise ValueError(f"no `RESULT {required}=...` line in fluxserve's output")
    out = {}
    for tok in found.split():
        if "=" not in tok:
            raise ValueError(f"bad RESULT token {tok!r}")
        k, v = tok.split("=", 1)
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    if required not in out:
        raise ValueError(f"RESULT line without {required}: {found.strip()!r}")
    return out


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_rev() -> str:
    def git(*a):
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)

    r = git("rev-parse", "--short", "HEAD")
    if r.returncode != 0:
        return "uncommitted"
    rev = r.stdout.strip()
    if git("status", "--porcelain", "--untracked-files=no").stdout.strip():
        rev += "-dirty"
    return rev
