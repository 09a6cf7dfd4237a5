"""New training sentences made from the training lines, for the distillation hand loop
(bench/prune_kd_explore.py `--swap N --swap-pool …`; issue 12, docs/distill.md).

Each function takes the lines and a number of rounds and returns one new variant of each line per
round. All three were measured on the real all-MiniLM-L6-v2 and gained nothing beyond run-to-run
noise; they stay so the measurements can be repeated. Written by hand: the usual augmentation
libraries (nlpaug, TextAttack) need word vectors or language models downloaded from the web, which
these benchmarks may not do; the model's own input embeddings stand in for those word vectors.
"""

from __future__ import annotations

import re

import numpy as np
import torch


def swap_pool(tok, lines, kind, model=None, k=8):
    """Words a swap draws from. text: the training lines' words; vocab: the tokenizer's whole-word
    tokens (WordPiece: not ##-prefixed), alphabetic, two letters or more; neighbours: a dict from
    each such token of 4+ letters (not function words) to its k nearest (cosine) of 4+ letters in
    `model`'s input word embeddings."""
    if kind == "crossover":  # splices draw from the lines themselves
        return None
    if kind == "text":
        return sorted({w for line in lines for w in line.split()})
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.islower() and len(w) > 1)
    if kind == "vocab":
        return words
    vocab = tok.get_vocab()
    table = model.embeddings.word_embeddings.weight.detach()
    words = [w for w in words if len(w) > 3]
    unit = torch.nn.functional.normalize(table[[vocab[w] for w in words]], dim=1)
    out = {}
    for start in range(0, len(words), 2048):
        top = (unit[start:start + 2048] @ unit.T).topk(k + 1, dim=1).indices[:, 1:]
        for i, row in enumerate(top.tolist()):
            out[words[start + i]] = [words[j] for j in row]
    return out


_WORD = re.compile(r"^(\W*)([A-Za-z]+)(\W*)$")


def _neighbour(word, table, rng):
    """`word` with its letters replaced by a neighbour from `table`, punctuation and a capital kept;
    None where it has no entry."""
    m = _WORD.match(word)
    if not m or m.group(2).lower() not in table:
        return None
    new = table[m.group(2).lower()][int(rng.integers(0, len(table[m.group(2).lower()])))]
    new = new.capitalize() if m.group(2)[0].isupper() else new
    return m.group(1) + new + m.group(3)


def neighbour_variants(lines, rounds, table, p, seed=0):
    """Each line with each word that has neighbours replaced, with probability p (one at least), by
    one of its nearest words in the teacher's input embeddings ("great" -> "terrific", "doctor" ->
    "physician"): words the training text lacks, in contexts like theirs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        for line in lines:
            words = line.split()
            options = [(i, n) for i, w in enumerate(words) if (n := _neighbour(w, table, rng)) is not None]
            if not options:
                continue
            hit = rng.random(len(options)) < p
            if not hit.any():
                hit[int(rng.integers(0, len(options)))] = True
            for (i, n), h in zip(options, hit, strict=True):
                words[i] = n if h else words[i]
            out.append(" ".join(words))
    return out


def swap_variants(lines, rounds, pool, p, seed=0):
    """Each line of 3+ words with each word replaced, with probability p (one at least), by a word
    drawn from `pool`: new combinations of words the teacher labels (TinyBERT-style augmentation,
    random words instead of a masked LM's). Measured: no gain (docs/distill.md)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        for line in lines:
            words = line.split()
            if len(words) < 3:
                continue
            hit = rng.random(len(words)) < p
            if not hit.any():
                hit[int(rng.integers(0, len(words)))] = True
            out.append(" ".join(pool[int(rng.integers(0, len(pool)))] if h else w for w, h in zip(words, hit, strict=True)))
    return out


def crossover_variants(lines, rounds, _pool, _p, seed=0):
    """Each line cut at one of its words and finished by another line from that word on ("he walked
    to the store after work" + "she drove to the coast" -> "he walked to the coast"): new sentences
    built from the training lines' own phrases. Lines sharing no word of 3+ letters give none."""
    rng = np.random.default_rng(seed)
    where: dict[str, list[tuple[int, int]]] = {}
    split = [line.split() for line in lines]
    for n, words in enumerate(split):
        for i, w in enumerate(words[1:-1], start=1):
            if len(w) > 2 and w.isalpha():
                where.setdefault(w.lower(), []).append((n, i))
    out = []
    for _ in range(rounds):
        for n, words in enumerate(split):
            cuts = [i for i in range(1, len(words) - 1) if len(where.get(words[i].lower(), ())) > 1]
            if not cuts:
                continue
            i = cuts[int(rng.integers(0, len(cuts)))]
            places = where[words[i].lower()]
            for _ in range(8):  # a draw from this same line (a word twice in it) is drawn again
                m, j = places[int(rng.integers(0, len(places)))]
                if m != n:
                    out.append(" ".join(words[:i] + split[m][j:]))
                    break
    return out
