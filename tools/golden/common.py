"""Helpers shared by the golden-fixture generators."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import diffusers
import numpy as np
import safetensors
import torch
import transformers


def versions() -> dict:
    """The library versions a fixture was made with (written next to it as versions.json)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
