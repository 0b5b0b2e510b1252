#!/usr/bin/env python3
"""Build the embedded default model, models/tiny-flux: a complete tiny FLUX.1-dev-like pipeline.

Real diffusers layout, written by FluxPipeline.save_pretrained: model_index.json, scheduler/,
text_encoder/ (CLIPTextModel), tokenizer/ (CLIP BPE), text_encoder_2/ (T5EncoderModel),
tokenizer_2/ (SentencePiece), transformer/ (FluxTransformer2DModel with guidance embedding), vae/
(AutoencoderKL, 16 latent channels). Weights are random (every parameter re-drawn) and stored in
bfloat16 like the real checkpoints: the model exercises the architecture; it draws no meaningful
pictures. Deterministic: fixed seed, CPU, one thread.

  .venv-golden/bin/python tools/golden/make_default_model.py     # rewrites models/tiny-flux
The tokenizer folders must exist first (make_tokenizer_assets.py); README.md is kept.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_pipeline import REPO, build_pipeline, save_pipeline  # noqa: E402

SEED = 20240801
MAX_BYTES = 4 * 1024 * 1024


def main() -> int:
    torch.set_num_threads(1)
    out = REPO / "models" / "tiny-flux"
    pipe = build_pipeline(dev=True, seed=SEED)  # reads the tokenizers from `out` before it is replaced
    with tempfile.TemporaryDirectory() as tmp:
        save_pipeline(pipe, Path(tmp) / "tiny-flux", torch.bfloat16)
        readme = out / "README.md"
        keep = readme.read_text() if readme.exists() else None
        shutil.rmtree(out)
        shutil.copytree(Path(tmp) / "tiny-flux", out)
        if keep is not None:
            readme.write_text(keep)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total > MAX_BYTES:
        raise RuntimeError(f"{out}: {total} bytes, over the {MAX_BYTES} byte budget")
    print(f"make_default_model: wrote {out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
