#!/usr/bin/env python3
"""Fixtures for engine/pipeline/torch_rng: torch.randn with torch.Generator("cpu").manual_seed(N).

Writes OUT/rng/randn.safetensors and OUT/rng/cases.json (see tests/golden/torch_rng_golden_test.cc).

Two CPU paths of torch's normal_fill are recorded:
  vec    - this interpreter's torch as it dispatches by default. On any x86-64 CPU with AVX2
           (capability AVX2 or AVX512; normal_stub has no AVX512 kernel) this is the
           avx_mathfun.h Box-Muller = TorchRngPath::kX86Vectorized. The script refuses to run
           if the capability is DEFAULT (it would record the scalar path under the wrong name).
  scalar - the same draws in a child interpreter with ATEN_CPU_CAPABILITY=default: torch's
           generic NormalFill16 with libm logf/sinf/cosf = TorchRngPath::kScalarLibm.

Small tensors (numel <= 2048) are stored whole; larger ones as their first and last 64 values
plus an FNV-1a 64 hash of all bytes (little endian) in cases.json. Usage:
  python tools/golden/generate_rng.py --out tests/golden/fixtures
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

SEEDS = [0, 1, 42, 2**31 - 1, 2**32 + 5, 2**63 - 1, 123456789]
SHAPES = [[1], [7], [15], [16], [17], [33], [1, 16, 8, 8], [2, 16, 6, 10], [1, 16, 64, 96],
          [1, 16, 128, 128]]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
FULL_MAX = 2048
EDGE = 64
MULTI = [  # diffusers randn_tensor with a list of CPU generators, one seed per batch item
    {"seeds": [0, 42], "shape": [2, 16, 8, 8]},
    {"seeds": [5, 6, 7], "shape": [3, 5]},  # per-sample numel 5 < 16: the scalar path
    {"seeds": [123456789, 1], "shape": [2, 16, 6, 10]},
]
SEQUENCE = {"seed": 7, "draws": [[[3], "f32"], [[16], "f32"], [[5], "f32"], [[20], "bf16"],
                                 [[1], "f32"], [[33], "f16"], [[2], "bf16"], [[1, 16, 4, 4], "f32"]]}


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def shape_key(shape):
    return "x".join(str(d) for d in shape)


def draw_all():
    """Every tensor of one path, by name."""
    from diffusers.utils.torch_utils import randn_tensor

    out = {}
    for seed in SEEDS:
        for shape in SHAPES:
            for dn, dt in DTYPES.items():
                if dn == "f16" and shape not in ([17], [33], [7]):
                    continue  # f16 shares the bf16 code; a few shapes are enough
                g = torch.Generator("cpu").manual_seed(seed)
                out[f"s{seed}/{shape_key(shape)}/{dn}"] = torch.randn(shape, generator=g, dtype=dt)
    for i, m in enumerate(MULTI):
        for dn in ("f32", "bf16"):
            gens = [torch.Generator("cpu").manual_seed(s) for s in m["seeds"]]
            t = randn_tensor(tuple(m["shape"]), generator=gens, device=torch.device("cpu"),
                             dtype=DTYPES[dn])
            out[f"multi{i}/{dn}"] = t
    g = torch.Generator("cpu").manual_seed(SEQUENCE["seed"])
    for i, (shape, dn) in enumerate(SEQUENCE["draws"]):
        out[f"seq{i}/{dn}"] = torch.randn(shape, generator=g, dtype=DTYPES[dn])
    # diffusers' own call for one FLUX latent (bf16 transformer): must equal plain torch.randn.
    g = torch.Generator("cpu").manual_seed(42)
    flux = randn_tensor((1, 16, 128, 128), generator=g, device=torch.device("cpu"),
                        dtype=torch.bfloat16)
    assert torch.equal(flux, out["s42/1x16x128x128/bf16"]), "randn_tensor != torch.randn"
    return out


def child_main(path):
    save_file({k: v.contiguous() for k, v in draw_all().items()}, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="fixtures root; writes OUT/rng/")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child_main(args._child)
        return

    torch.set_num_threads(1)
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        sys.exit(f"torch reports CPU capability {cap}; the 'vec' path needs AVX2 or AVX512")
    paths = {"vec": draw_all()}
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "scalar.safetensors")
        env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
        subprocess.run([sys.executable, __file__, "--out", args.out, "--_child", f], env=env,
                       check=True)
        paths["scalar"] = load_file(f)
    # The two paths must differ somewhere (else the capability override did nothing).
    assert not torch.equal(paths["vec"]["s42/1x16x128x128/f32"], paths["scalar"]["s42/1x16x128x128/f32"])

    tensors, entries = {}, []
    for pname, drawn in paths.items():
        for name, t in drawn.items():
            key = f"{pname}/{name}"
            e = {"name": key, "path": pname, "dtype": name.rsplit("/", 1)[1],
                 "shape": list(t.shape), "fnv1a64": fnv1a64(raw_bytes(t)),
                 "sha256": hashlib.sha256(raw_bytes(t)).hexdigest()}
            if t.numel() <= FULL_MAX:
                e["stored"] = "full"
                tensors[key] = t.contiguous()
            else:
                e["stored"] = "edges"
                flat = t.reshape(-1)
                tensors[key + "/head"] = flat[:EDGE].clone()
                tensors[key + "/tail"] = flat[-EDGE:].clone()
            entries.append(e)

    root = os.path.join(args.out, "rng")
    os.makedirs(root, exist_ok=True)
    save_file(tensors, os.path.join(root, "randn.safetensors"))
    os.chmod(os.path.join(root, "randn.safetensors"), 0o644)
    cases = {
        "torch_version": torch.__version__,
        "cpu_capability": cap,
        "cpu_capability_scalar_path": "DEFAULT (ATEN_CPU_CAPABILITY=default)",
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "libc": " ".join(platform.libc_ver()),
        "seeds": SEEDS,
        "shapes": SHAPES,
        "multi": MULTI,
        "sequence": SEQUENCE,
        "edge": EDGE,
        "tensors": entries,
    }
    with open(os.path.join(root, "cases.json"), "w") as fh:
        json.dump(cases, fh, indent=1)
        fh.write("\n")
    size = os.path.getsize(os.path.join(root, "randn.safetensors"))
    print(f"wrote {len(entries)} cases, randn.safetensors {size} bytes, torch {torch.__version__} {cap}")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
