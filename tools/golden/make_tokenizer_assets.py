#!/usr/bin/env python3
"""Build the tiny embedded model's tokenizers: models/tiny-flux/tokenizer (CLIP) and tokenizer_2 (T5).

CLIP (`tokenizer/`): OpenAI's real BPE merges file `bpe_simple_vocab_16e6.txt.gz` (shipped in the
open_clip_torch wheel; fetched with `pip download --no-deps` unless --clip-bpe names it), reduced
to its first NUM_CLIP_MERGES merges so the tiny text model's embedding table stays small. The
vocabulary is derived exactly as OpenAI's SimpleTokenizer / HF's CLIP files do: the 256
byte-to-unicode characters, the same with '</w>', one token per merge, then '<|startoftext|>' and
'<|endoftext|>'. BPE with a rank-truncated merge list is still exact BPE, so the token ids of this
vocabulary are a prefix-compatible subset of the real 49408 (ids < 512 + N are identical).
Files: vocab.json, merges.txt (written the way HF writes them), tokenizer_config.json and
special_tokens_map.json from transformers' CLIPTokenizer.save_pretrained. transformers 5 also
writes tokenizer.json; it is removed so the folder has the real FLUX repo's layout (loading then
builds the tokenizer from vocab.json + merges.txt, which the script checks gives the same ids).

T5 (`tokenizer_2/`): no real spiece.model is reachable offline, so a small SentencePiece unigram
model (vocab NUM_T5_PIECES, T5's ids: <pad>=0, </s>=1, <unk>=2, no <s>, nmt_nfkc normalisation)
is trained on a corpus built from this Python's stdlib docstrings plus generated multilingual
lines. It is converted with transformers' T5TokenizerFast.from_pretrained (extra_ids=100,
model_max_length=512) and saved; spiece.model and special_tokens_map.json are added beside
tokenizer.json and tokenizer_config.json (the real FLUX repo's tokenizer_2 layout).

Run from the repository root (needs the venv of tools/golden/requirements.txt incl. sentencepiece,
protobuf):

  /work/.venv-golden/bin/python tools/golden/make_tokenizer_assets.py            # models/tiny-flux
  $GOLDEN_PYTHON tools/golden/make_tokenizer_assets.py --out /tmp/tiny-flux       # elsewhere

Deterministic: the corpus is generated in a fixed order and the trainer runs on one thread with no
sampling/shuffling; the same Python + sentencepiece versions give identical bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NUM_CLIP_MERGES = 2000  # vocab = 512 + 2000 + 2 = 2514
NUM_T5_PIECES = 1000  # sentencepiece vocab incl. <pad>, </s>, <unk>; + 100 extra ids = 1100
OPEN_CLIP_VERSION = "3.3.0"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# Modules whose docstrings make the English part of the T5 corpus (fixed order).
CORPUS_MODULES = [
    "builtins", "os", "os.path", "re", "json", "string", "collections", "itertools", "functools",
    "textwrap", "argparse", "pathlib", "datetime", "random", "statistics", "math", "fractions",
    "decimal", "shutil", "subprocess", "threading", "queue", "heapq", "bisect", "csv", "zipfile",
    "tarfile", "gzip", "logging", "unittest", "typing", "dataclasses", "enum", "inspect", "io",
    "socket", "email", "html", "urllib.parse", "http.client", "calendar", "difflib", "pprint",
]

# Multilingual / symbol lines so the model has real pieces for accents, CJK, RTL and emoji.
UNICODE_LINES = [
    "Café au lait, crème brûlée, naïve façade, déjà vu, señor, jalapeño, Ångström, smörgåsbord.",
    "Über die Brücke gehen große Mädchen; Straße, Fußgänger, schön, Äpfel, Öl.",
    "東京の夜景はとても美しい。猫が窓辺で眠っている。富士山と桜の写真。",
    "一只可爱的小猫坐在红色的椅子上，背景是蓝色的天空和白云。",
    "서울의 밤거리, 한강 위의 다리, 아름다운 풍경 사진.",
    "Привет, мир! Красивый закат над морем, кошка на окне.",
    "Καλημέρα κόσμε, ο ήλιος λάμπει πάνω από τη θάλασσα.",
    "مرحبا بالعالم، قطة جميلة تجلس على الكرسي.",
    "שלום עולם, חתול יפה יושב על הכיסא.",
    "नमस्ते दुनिया, एक सुंदर बिल्ली कुर्सी पर बैठी है।",
    "Emoji: 😀 🐱 🚀 🌅 ❤️ 👍 🎨 🌸 🔥 ✨ — “quotes”, ‘single’, «guillemets», … and • bullets.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 1024 3.14159 2,718 1/2 ½ ¼ ² ³ № 1st 2nd 3rd 4th.",
    "Punctuation: !?.,;:'\"()[]{}<>@#$%^&*_-+=~`|\\/ — – ·",
    "It's a photo; I'LL be there. They're here, we've seen it, I'm sure, he'd go, don't.",
    "A photograph of an astronaut riding a horse on the moon, highly detailed, 8k, cinematic lighting.",
    "a cat holding a sign that says hello world, digital art, trending on artstation, 4k",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-unicode table (identical to openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def fetch_clip_bpe(explicit: str | None, work: Path) -> bytes:
    if explicit:
        data = Path(explicit).read_bytes()
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", f"open_clip_torch=={OPEN_CLIP_VERSION}",
                        "--no-deps", "-q", "-d", str(work)], check=True)
        wheel = next(work.glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    digest = hashlib.sha256(data).hexdigest()
    if digest != CLIP_BPE_SHA256:
        raise SystemExit(f"bpe_simple_vocab_16e6.txt.gz: unexpected sha256 {digest}")
    return data


def make_clip(out: Path, bpe_gz: bytes) -> None:
    from transformers import CLIPTokenizer

    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    # OpenAI: merges = lines[1:49152-256-2+1]; line 0 is the version header.
    merges = [tuple(m.split()) for m in lines[1:NUM_CLIP_MERGES + 1]]
    assert all(len(m) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab) == 512 + NUM_CLIP_MERGES + 2
    encoder = {tok: i for i, tok in enumerate(vocab)}

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        # Same formatting as HF's CLIPTokenizer (slow) save_vocabulary.
        vocab_file.write_text(json.dumps(encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                              encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges),
                               encoding="utf-8")
        tok = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
        if out.exists():
            shutil.rmtree(out)
        tok.save_pretrained(str(out))
        shutil.copy(vocab_file, out / "vocab.json")
        shutil.copy(merges_file, out / "merges.txt")
    (out / "tokenizer.json").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = 77
    config["tokenizer_class"] = "CLIPTokenizer"
    for k in ("is_local", "local_files_only"):
        config.pop(k, None)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                               encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")

    # Check: reloading from vocab.json + merges.txt gives the real ids and the specials at the end.
    tok = CLIPTokenizer.from_pretrained(str(out))
    n = len(vocab)
    assert tok.bos_token_id == n - 2 and tok.eos_token_id == n - 1 and tok.pad_token_id == n - 1, (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tok.model_max_length == 77
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == n - 2, ids
    print(f"CLIP tokenizer: vocab {n}, {len(merges)} merges -> {out}")


def build_corpus() -> str:
    import inspect

    lines: list[str] = []
    for name in CORPUS_MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            try:
                obj = getattr(mod, attr)
            except Exception:  # noqa: BLE001 - some module attributes raise on access
                continue
            if getattr(obj, "__module__", name) not in (name, "builtins", None):
                continue
            doc = inspect.getdoc(obj)
            if doc:
                docs.append(doc)
        for doc in docs:
            for line in doc.splitlines():
                line = line.strip()
                if len(line) > 3:
                    lines.append(line)
    for rep in range(30):
        lines.extend(UNICODE_LINES)
        lines.append(" ".join(str(i * 37 + rep) for i in range(rep, rep + 12)))
    # Drop exact duplicates while keeping order, so the corpus does not depend on set ordering.
    seen: set[str] = set()
    uniq = []
    for line in lines:
        if line not in seen or line in UNICODE_LINES:
            seen.add(line)
            uniq.append(line)
    return "\n".join(uniq) + "\n"


def make_t5(out: Path) -> None:
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(build_corpus(), encoding="utf-8")
        prefix = Path(tmp) / "spiece"
        # The trainer records input and model_prefix in the model's trainer_spec: pass relative
        # names from inside the temporary folder so the bytes do not depend on its random path.
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            spm.SentencePieceTrainer.train(
                input="corpus.txt", model_prefix="spiece", vocab_size=NUM_T5_PIECES, model_type="unigram",
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
                unk_piece="<unk>", normalization_rule_name="nmt_nfkc", add_dummy_prefix=True,
                remove_extra_whitespaces=True, character_coverage=0.9995, num_threads=1,
                input_sentence_size=0, shuffle_input_sentence=False,
                seed_sentencepiece_size=200000, minloglevel=2)
        finally:
            os.chdir(cwd)
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy(str(prefix) + ".model", src / "spiece.model")
        (src / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "model_max_length": 512}), encoding="utf-8")
        tok = T5TokenizerFast.from_pretrained(str(src))
        if out.exists():
            shutil.rmtree(out)
        tok.save_pretrained(str(out))
        shutil.copy(src / "spiece.model", out / "spiece.model")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    for k in ("is_local", "local_files_only"):
        config.pop(k, None)
    config["tokenizer_class"] = "T5Tokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                               encoding="utf-8")
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")

    tok = T5TokenizerFast.from_pretrained(str(out))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == NUM_T5_PIECES + 100, len(tok)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == NUM_T5_PIECES + 99
    print(f"T5 tokenizer: {NUM_T5_PIECES} pieces + 100 extra ids -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/tiny-flux", help="pipeline root (writes tokenizer/, tokenizer_2/)")
    ap.add_argument("--clip-bpe", default=None, help="path to bpe_simple_vocab_16e6.txt.gz (else pip download)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        make_clip(out / "tokenizer", fetch_clip_bpe(args.clip_bpe, Path(work)))
    make_t5(out / "tokenizer_2")
    for sub in ("tokenizer", "tokenizer_2"):
        size = sum(p.stat().st_size for p in (out / sub).iterdir())
        assert size < 1_000_000, (sub, size)


if __name__ == "__main__":
    main()
