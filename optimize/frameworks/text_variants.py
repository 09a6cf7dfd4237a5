"""New training inputs made from unlabeled lines, for a student that learns a teacher's outputs.

A distilled student that sees the same few thousand lines every epoch learns those lines, not the
function: on the real MiniLM with half its FFN removed, training cosine kept rising while held-out
cosine stopped (docs/distill.md). The teacher labels any input, so the lines can be varied:

- word spans (`text_spans`): fixed contiguous parts of the longer lines, added once;
- variants (`text_variants`): every round, one new variant of each line — a random span, or the
  line with some words dropped.

Replacing words by random words of the tokenizer's vocabulary (new words for the student: everyday
held-out sentences had 15% of their words unseen in 7,000 training lines) was measured and gained
nothing (docs/distill.md), so it is not offered.

Written by hand: the text-augmentation libraries (nlpaug, TextAttack) need language models or word
lists to download; these edits need only the lines.
"""

from __future__ import annotations

import numpy as np

DROP_P = 0.15  # a word's chance of being dropped in a drop variant (one word at least)


def _span(words: list[str], rng: np.random.Generator) -> str:
    k = int(rng.integers(3, len(words)))
    start = int(rng.integers(0, len(words) - k + 1))
    return " ".join(words[start:start + k])


def _drop(words: list[str], rng: np.random.Generator) -> str:
    keep = rng.random(len(words)) >= DROP_P
    if keep.all():
        keep[int(rng.integers(0, len(words)))] = False
    while keep.sum() < 2:  # two words at least: not an empty or one-word input
        keep[int(rng.choice(np.flatnonzero(~keep)))] = True
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


def word_variants(texts: list[str], rounds: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """`rounds` rounds of one variant of each line of 3 words or more, and each variant's round. A
    variant is at random a contiguous span (3 words up to all but one; lines of 4+ words) or the
    line with each word dropped with probability DROP_P (one at least, two kept at least). A student trains on the lines plus its
    share of the rounds each epoch (passes/distill/batches.py), so it sees new inputs every epoch:
    on the real MiniLM with half its FFN removed, held-out cosine mean / min 0.965 / 0.870 → 0.971 /
    0.906 with spans and drops (docs/distill.md)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    ids: list[int] = []
    for r in range(rounds):
        for text in texts:
            words = text.split()
            if len(words) < 3:
                continue
            if len(words) >= 4 and rng.random() < 0.5:
                out.append(_span(words, rng))
            else:
                out.append(_drop(words, rng))
            ids.append(r)
    return out, np.asarray(ids, dtype=np.int64)


def word_spans(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` rounds of one random contiguous span per line of 6 words or more: 4 words up to all but one."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        for text in texts:
            words = text.split()
            if len(words) >= 6:
                k = int(rng.integers(4, len(words)))
                start = int(rng.integers(0, len(words) - k + 1))
                out.append(" ".join(words[start:start + k]))
    return out
