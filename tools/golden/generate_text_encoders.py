#!/usr/bin/env python3
"""Golden fixtures for fluxserve's text encoders (CLIPTextModel, T5EncoderModel) from transformers.

Writes, under FIXTURES_ROOT/text_encoders/ (FIXTURES_ROOT = --out, default tests/golden/fixtures):

  <case>/model/config.json, model.safetensors   tiny model, save_pretrained layout (CLIP case
                                                clip_legacy rewritten to the pre-transformers-5
                                                `text_model.` key layout FLUX.1-dev ships)
  <case>/inputs.safetensors                     input_ids [B, L] int64, shaped like tokenized prompts
  <case>/outputs.safetensors                    last_hidden_state [B, L, H] (+ pooler_output [B, H]
                                                for CLIP), float32, from the model reloaded with
                                                from_pretrained(dtype=float32)
  <case>/meta.json                              config summary, pooled positions, output norms
  t5_buckets.safetensors                        T5Attention._relative_position_bucket(rel) for
                                                rel in [-1000, 1000] and a few bucket settings
  versions.json                                 library versions

Deterministic: each case seeds its own torch.Generator; CPU, one thread.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

# CLIP: the last two ids play <|startoftext|> / <|endoftext|> (49406 / 49407 in the real vocab);
# prompts are bos + tokens + eos, right-padded with the eos id (pad token = <|endoftext|>).
CLIP_CASES = [
    dict(
        case="clip_legacy",  # FLUX.1-dev's text_encoder: eos_token_id 2 (argmax pooling)
        config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=2,
                    vocab_size=1000, max_position_embeddings=77, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        seq_len=77, prompt_lens=[5, 40], seed=101, legacy_layout=True),
    dict(
        case="clip_eos",  # corrected config: eos_token_id = <|endoftext|> (first-eos pooling)
        config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=2,
                    vocab_size=1000, max_position_embeddings=77, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, bos_token_id=998, eos_token_id=999, pad_token_id=1),
        seq_len=77, prompt_lens=[75, 12], seed=102, legacy_layout=False),
    dict(
        # eos id below other ids in the prompt: argmax and first-eos pooling differ; one row has
        # no eos at all (pooled at position 0); gelu_new activation; L < max_position_embeddings.
        case="clip_eos_mid",
        config=dict(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1,
                    vocab_size=300, max_position_embeddings=40, hidden_act="gelu_new",
                    layer_norm_eps=1e-5, bos_token_id=298, eos_token_id=150, pad_token_id=1),
        seq_len=33, prompt_lens=[10, 20, -1], seed=103, legacy_layout=False),
]

# T5 v1.1 style (FLUX's text_encoder_2): gated-gelu, 32 buckets, max distance 128. Prompts are
# tokens + </s> (1), right-padded with <pad> (0).
T5_BASE = dict(d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=2, vocab_size=1100,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", pad_token_id=0,
               eos_token_id=1, tie_word_embeddings=False)
T5_CASES = [
    dict(case="t5_short", config=T5_BASE, seq_len=17, prompt_lens=[9, 16], seed=201,
         dtype="float32", embed_key="shared.weight"),
    # Beyond max_distance: exercises the exact, log and clamped buckets. Stored in bf16 (read back
    # in float32 for the reference) under the encoder.embed_tokens.weight name only.
    dict(case="t5_long_bf16", config=T5_BASE, seq_len=150, prompt_lens=[60, 149], seed=202,
         dtype="bfloat16", embed_key="encoder.embed_tokens.weight"),
]

BUCKET_SETTINGS = [(32, 128), (64, 256), (8, 20)]
BUCKET_RANGE = 1000




@torch.no_grad()
def rerandomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Redraw every parameter so each one matters (default init leaves norms at 1, biases at 0).

    2-d (linear weights, embeddings): N(0, (0.8/sqrt(fan_in))^2); T5's relative bias table N(0, 1)
    so position matters; 1-d norm weights 1 + N(0, 0.2^2); biases N(0, 0.1^2).
    """
    for name, p in model.named_parameters():
        if name.endswith("relative_attention_bias.weight"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(p.shape[1])))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif p.ndim == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def clip_ids(case: dict, gen: torch.Generator) -> torch.Tensor:
    cfg = case["config"]
    vocab, L = cfg["vocab_size"], case["seq_len"]
    bos, eos = vocab - 2, vocab - 1
    if cfg["eos_token_id"] not in (2, eos):
        eos = cfg["eos_token_id"]
    rows = []
    for n in case["prompt_lens"]:
        if n < 0:  # no eos anywhere: a truncated prompt without its end token
            toks = torch.randint(3, vocab - 2, (L - 1,), generator=gen)
            rows.append(torch.cat([torch.tensor([bos]), toks]))
            continue
        toks = torch.randint(3, vocab - 2, (n,), generator=gen)
        toks[toks == eos] = eos + 1
        row = torch.cat([torch.tensor([bos]), toks, torch.full((L - 1 - n,), eos)])
        rows.append(row)
    ids = torch.stack(rows).to(torch.int64)
    assert ids.shape == (len(case["prompt_lens"]), L)
    return ids


def t5_ids(case: dict, gen: torch.Generator) -> torch.Tensor:
    vocab, L = case["config"]["vocab_size"], case["seq_len"]
    rows = []
    for n in case["prompt_lens"]:
        toks = torch.randint(3, vocab, (n,), generator=gen)
        rows.append(torch.cat([toks, torch.tensor([1]), torch.zeros(L - 1 - n, dtype=torch.int64)]))
    return torch.stack(rows).to(torch.int64)


def to_legacy_clip_layout(model_dir: Path, max_pos: int) -> None:
    """Rewrite a transformers-5 CLIPTextModel checkpoint to the transformers-4 layout that the
    FLUX repos ship: every key under `text_model.`, plus the `position_ids` buffer."""
    path = model_dir / "model.safetensors"
    sd = load_file(str(path))
    legacy = {f"text_model.{k}": v for k, v in sd.items()}
    legacy["text_model.embeddings.position_ids"] = torch.arange(max_pos, dtype=torch.int64)[None]
    save_file(legacy, str(path), metadata={"format": "pt"})


def rename_key(model_dir: Path, old: str, new: str) -> None:
    path = model_dir / "model.safetensors"
    sd = load_file(str(path))
    sd[new] = sd.pop(old)
    save_file(sd, str(path), metadata={"format": "pt"})


@torch.no_grad()
def make_clip_case(case: dict, root: Path) -> dict:
    cdir = root / case["case"]
    shutil.rmtree(cdir, ignore_errors=True)
    gen = torch.Generator().manual_seed(case["seed"])
    model = CLIPTextModel(CLIPTextConfig(**case["config"])).eval()
    rerandomise(model, gen)
    ids = clip_ids(case, gen)
    model.save_pretrained(cdir / "model")
    if case["legacy_layout"]:
        to_legacy_clip_layout(cdir / "model", case["config"]["max_position_embeddings"])
    # The reference is what a user gets from the files on disk.
    ref = CLIPTextModel.from_pretrained(cdir / "model", dtype=torch.float32).eval()
    out = ref(input_ids=ids)
    direct = model(input_ids=ids)
    assert torch.equal(out.last_hidden_state, direct.last_hidden_state), "reload changed the model"
    last, pooled = out.last_hidden_state.contiguous(), out.pooler_output.contiguous()
    # Which position was pooled (for meta and as a check that the intended branch is exercised).
    pos = [int(torch.nonzero((last[b] == pooled[b]).all(-1))[0]) for b in range(ids.shape[0])]
    save_file({"input_ids": ids}, str(cdir / "inputs.safetensors"))
    save_file({"last_hidden_state": last, "pooler_output": pooled}, str(cdir / "outputs.safetensors"))
    meta = dict(case=case["case"], model="CLIPTextModel", config=case["config"],
                legacy_layout=case["legacy_layout"], input_shape=list(ids.shape), pooled_positions=pos,
                last_hidden_state_norm=float(last.double().norm()))
    write_json(cdir / "meta.json", meta)
    return meta


@torch.no_grad()
def make_t5_case(case: dict, root: Path) -> dict:
    cdir = root / case["case"]
    shutil.rmtree(cdir, ignore_errors=True)
    gen = torch.Generator().manual_seed(case["seed"])
    model = T5EncoderModel(T5Config(**case["config"])).eval()
    rerandomise(model, gen)
    ids = t5_ids(case, gen)
    dtype = getattr(torch, case["dtype"])
    model.to(dtype).save_pretrained(cdir / "model")
    saved = set(load_file(str(cdir / "model" / "model.safetensors")))
    if case["embed_key"] != "shared.weight":
        rename_key(cdir / "model", "shared.weight", case["embed_key"])
    ref = T5EncoderModel.from_pretrained(cdir / "model", dtype=torch.float32).eval()
    last = ref(input_ids=ids).last_hidden_state.contiguous()
    direct = model.float()(input_ids=ids).last_hidden_state
    assert torch.equal(last, direct), "reload changed the model (embedding key not picked up?)"
    save_file({"input_ids": ids}, str(cdir / "inputs.safetensors"))
    save_file({"last_hidden_state": last}, str(cdir / "outputs.safetensors"))
    meta = dict(case=case["case"], model="T5EncoderModel", config=case["config"], dtype=case["dtype"],
                embed_key=case["embed_key"], keys_written_by_save_pretrained=sorted(saved)[:3] + ["..."],
                input_shape=list(ids.shape), last_hidden_state_norm=float(last.double().norm()))
    write_json(cdir / "meta.json", meta)
    return meta


def make_buckets(root: Path) -> None:
    rel = torch.arange(-BUCKET_RANGE, BUCKET_RANGE + 1, dtype=torch.int64)
    tensors = {"relative_position": rel.to(torch.int32)}
    for nb, md in BUCKET_SETTINGS:
        b = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
        tensors[f"buckets_{nb}_{md}"] = b.to(torch.int32)
    save_file(tensors, str(root / "t5_buckets.safetensors"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "golden" / "fixtures"),
                    help="fixtures root; cases go to <out>/text_encoders/")
    args = ap.parse_args()
    root = Path(args.out).resolve() / "text_encoders"
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    write_json(root / "versions.json", versions())
    for case in CLIP_CASES:
        m = make_clip_case(case, root)
        print(f"[clip] {m['case']:14s} ids={tuple(m['input_shape'])} pooled at {m['pooled_positions']} "
              f"|last|={m['last_hidden_state_norm']:.3f}")
    for case in T5_CASES:
        m = make_t5_case(case, root)
        print(f"[t5]   {m['case']:14s} ids={tuple(m['input_shape'])} {m['dtype']} embed={m['embed_key']} "
              f"|last|={m['last_hidden_state_norm']:.3f}")
    make_buckets(root)
    # Drop files save_pretrained adds that the tests do not need (generation_config for T5).
    for p in root.rglob("generation_config.json"):
        p.unlink()
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"text_encoders fixtures: {total / 1024:.0f} KiB in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
