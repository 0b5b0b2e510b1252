#!/usr/bin/env python3
"""Golden tokenizer fixtures: input ids from transformers for the tiny model's two tokenizers.

Loads models/tiny-flux/tokenizer with CLIPTokenizer and tokenizer_2 with T5TokenizerFast (the
classes FluxPipeline's model_index names; transformers 5 has no ftfy step in CLIPTokenizer), and
tokenizes a prompt set exactly as FluxPipeline._get_clip_prompt_embeds / _get_t5_prompt_embeds do
(padding="max_length", truncation=True; max_length 77 for CLIP, max_sequence_length 512 and 256
for T5), plus the untruncated ids (padding="longest") and diffusers' warning text.

Writes <out>/tokenizers/cases.json (UTF-8):
  {"versions": {...}, "model": "models/tiny-flux", "clip_max_length": 77, "t5_max_lengths": [512, 256],
   "cases": [{"name", "prompt", "clip_ids", "clip_untruncated_length", "clip_removed_text",
              "t5": {"512": {"ids", "untruncated_length", "removed_text"}, "256": {...}}}, ...]}

  $GOLDEN_PYTHON tools/golden/generate_tokenizers.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "tiny-flux"

LONG_EN = (
    "A breathtaking panoramic photograph of an ancient mountain village at golden hour, with narrow "
    "cobblestone streets winding between stone houses, terracotta roofs glowing in warm light, "
    "laundry hanging from wooden balconies, a small bakery with fresh bread in the window, an old "
    "man reading a newspaper on a bench, children chasing a red balloon, cats sleeping on warm "
    "steps, flowering vines climbing the walls, distant snow-capped peaks under a pastel sky, "
    "soft volumetric fog in the valley below, highly detailed, 8k, shot on a 35mm lens, f/1.8, "
    "cinematic color grading, award-winning composition. "
)

PROMPTS: list[tuple[str, str]] = [
    ("empty", ""),
    ("simple", "a photo of a cat"),
    ("astronaut", "A photograph of an astronaut riding a horse on the moon, highly detailed, 8k."),
    ("sign", 'a cat holding a sign that says "hello world", digital art'),
    ("contractions", "It's here, I'LL go, they're fine, we've won, I'm sure, he'd know, don't STOP, WON'T"),
    ("contraction_edges", "'s'S 'tis ''ll' rock'n'roll o'clock '"),
    ("numbers", "1234567890 3.14159 1,000,000 ½ ² ³ ① Ⅻ 2024-08-01 #42 $9.99 100% v1.2.3"),
    ("punctuation", "Hello!!! What?! (yes) [no] {maybe} <tag> a/b\\c @user #hashtag ... -- — – ~`^|"),
    ("spaces", "  leading and trailing spaces   "),
    ("whitespace_runs", "tabs\t\tand\nnewlines\n\n  and   runs\r\nof\x0bwhite\x0cspace"),
    ("unicode_spaces", "nbsp\u00a0ideographic\u3000thin\u2009line\u2028para\u2029nel\u0085end"),
    ("accents", "Café crème brûlée, naïve façade, déjà vu, señor jalapeño, Ångström, Über Straße"),
    ("decomposed", "Cafe\u0301 cre\u0300me nai\u0308ve A\u030angstro\u0308m"),
    ("cjk", "東京の夜景はとても美しい。一只可爱的小猫坐在红色的椅子上。서울의 밤거리"),
    ("emoji", "😀 🐱🚀 a cat 🐈 with ❤️ and 👍🏽 family 👨‍👩‍👧 flags 🇫🇷 ✨"),
    ("rtl", "مرحبا بالعالم، قطة جميلة. שלום עולם, חתול יפה."),
    ("mixed_scripts", "Привет мир, Καλημέρα κόσμε, नमस्ते दुनिया, สวัสดี, ქართული"),
    ("case", "UPPER lower MiXeD ΣΑΣ İstanbul ǅungla ẞ"),
    ("specials_clip", "<|startoftext|>a<|endoftext|>b <|ENDOFTEXT|> <|startoftext"),
    ("specials_t5", "<extra_id_0> fill <extra_id_99> and </s> then <pad> or <unk> <extra_id_100> <extra_id_"),
    ("zero_width", "zero\u200bwidth\u200cjoiner\u200dand\ufeffbom\u00adsoft"),
    ("controls", "bell\x07 esc\x1b del\x7f unit\x1fsep"),
    ("fullwidth", "ＦＵＬＬＷＩＤＴＨ ｆｕｌｌ １２３ ﬁ ﬂ ™ ℃ ㎏"),
    ("long_clip", LONG_EN),
    ("long_t5", LONG_EN * 8),
    ("long_words", "supercalifragilisticexpialidocious " * 20 + "x" * 300),
    ("only_space", "   \t\n "),
    ("only_punct", "!?.,;:"),
]


def random_prompts() -> list[tuple[str, str]]:
    rng = random.Random(1234)
    alphabet = list("abcdeXYZ      ,.!?'\"-_/0123456789") + ["'s", "'LL", "\t", "\n", "é", "ü", "東",
                                                            "京", "😀", "ا", "ß", "İ", "ﬁ", "①", "\u00a0",
                                                            "<|endoftext|>", "<extra_id_1>", "</s>"]
    out = []
    for i in range(40):
        out.append((f"random_{i:02d}", "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden" / "fixtures"), help="fixtures root")
    args = ap.parse_args()

    import tokenizers
    import transformers
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
    t5 = T5TokenizerFast.from_pretrained(str(MODEL / "tokenizer_2"))
    clip_max = clip.model_max_length
    assert clip_max == 77

    cases = []
    for name, prompt in PROMPTS + random_prompts():
        case = {"name": name, "prompt": prompt}
        # FluxPipeline._get_clip_prompt_embeds
        ids = clip(prompt, padding="max_length", max_length=clip_max, truncation=True,
                   return_overflowing_tokens=False, return_length=False).input_ids
        untrunc = clip(prompt, padding="longest").input_ids
        case["clip_ids"] = ids
        case["clip_untruncated_length"] = len(untrunc)
        case["clip_removed_text"] = (clip.batch_decode([untrunc[clip_max - 1:-1]])[0]
                                     if len(untrunc) > clip_max else "")
        case["t5"] = {}
        # FluxPipeline._get_t5_prompt_embeds
        for max_len in (512, 256):
            ids = t5(prompt, padding="max_length", max_length=max_len, truncation=True,
                     return_length=False, return_overflowing_tokens=False).input_ids
            untrunc = t5(prompt, padding="longest").input_ids
            case["t5"][str(max_len)] = {
                "ids": ids,
                "untruncated_length": len(untrunc),
                "removed_text": (t5.batch_decode([untrunc[max_len - 1:-1]])[0] if len(untrunc) > max_len else ""),
            }
        cases.append(case)

    assert any(c["clip_untruncated_length"] > 77 for c in cases)
    assert any(c["t5"]["512"]["untruncated_length"] > 512 for c in cases)
    out = {
        "versions": {"python": platform.python_version(), "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "model": "models/tiny-flux",
        "clip_max_length": clip_max,
        "t5_max_lengths": [512, 256],
        "cases": cases,
    }
    dest = Path(args.out) / "tokenizers"
    dest.mkdir(parents=True, exist_ok=True)
    # One case per line keeps diffs readable.
    text = json.dumps({k: v for k, v in out.items() if k != "cases"}, ensure_ascii=False)[:-1]
    text += ', "cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n"
    json.loads(text)
    (dest / "cases.json").write_text(text, encoding="utf-8")
    print(f"wrote {len(cases)} tokenizer cases to {dest / 'cases.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
