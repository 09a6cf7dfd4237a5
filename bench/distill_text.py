"""General English text for distillation benchmarks, from what installed packages ship offline.

Paragraphs of the docstrings of the Python standard library's modules, classes and functions
(prose only: paragraphs without code markers, 6 to 80 words, collapsed to one line, deduplicated),
in a fixed order, then split by a hash of the text into training and evaluation lines, so the two
are disjoint and the split does not depend on how many lines are asked for.

    python -m bench.distill_text OUT_DIR [--train 7000] [--eval 300] [--packages numpy,torch]

`--packages` adds the docstrings of those installed packages after the standard library's (same
filter, same hash split): the standard library alone gives about 5,350 training lines. The first
evaluation lines stay the standard library's, so `--eval 300` is the same set with or without it.

writes OUT_DIR/train.txt and OUT_DIR/eval.txt (one line per example) and prints their counts.
"""

from __future__ import annotations

import argparse
import hashlib
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
    a = ap.parse_args()
    train, evals = split(lines(tuple(p for p in a.packages.split(",") if p)), a.train, a.eval)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train.txt").write_text("\n".join(train) + "\n")
    (a.out / "eval.txt").write_text("\n".join(evals) + "\n")
    print(f"{len(train)} training lines, {len(evals)} eval lines -> {a.out}")


if __name__ == "__main__":
    main()
