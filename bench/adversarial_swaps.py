"""Adversarial word swaps for distillation (`bench.prune_kd_explore --adv W`): each training batch
also trains on a copy of its lines with the tokens the student gets most wrong swapped in.

The pruned student's worst held-out sentences are far in meaning from every training line, and
random or neighbour-word swaps, spliced lines and interpolated embeddings did not reach them
(docs/distill.md). Here the swaps follow the student's error instead (HotFlip, Ebrahimi et al.
2018): the gradient g_p of 1 - cos(student, teacher) with respect to the input embedding at
position p scores replacing its token by word w as (E_w - E_p) · g_p, to first order; the best
`k` positions of each line take their best word from the training text's own tokens. The teacher
labels the new lines, so the student trains where it is currently furthest from the teacher.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SPECIAL = {0, 100, 101, 102, 103}  # BERT's [PAD] [UNK] [CLS] [SEP] [MASK]


def swap_vocab(ids: torch.Tensor, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole-word token ids the training text holds, less the special ones (the words a swap
    may bring), and a flag per vocabulary id: a word piece ('##…')."""
    piece = torch.tensor([t.startswith("##") for t in tok.convert_ids_to_tokens(list(range(tok.vocab_size)))])
    u = torch.unique(ids)
    return u[~torch.isin(u, torch.tensor(sorted(SPECIAL))) & ~piece[u]], piece


def _pooled(model, a, **inputs):
    """The model's mean-pooled, normalized embedding of `input_ids` or `inputs_embeds` under mask `a`."""
    h = model(attention_mask=a, **inputs).last_hidden_state.float()
    m = a.unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def hotflip(student, teacher, i, a, vocab, k: int) -> torch.Tensor:
    """`i` with, in each line, the `k` one-token words whose best first-order swap raises the
    student's miss most replaced by that word (`vocab`: ids and word-piece flags, `swap_vocab`)."""
    vocab, piece = vocab
    table = teacher.embeddings.word_embeddings.weight.detach()
    x = table[i].clone().requires_grad_(True)
    miss = (1 - F.cosine_similarity(_pooled(student, a, inputs_embeds=x), _pooled(teacher, a, inputs_embeds=x), dim=-1)).sum()
    (g,) = torch.autograd.grad(miss, x)
    gain = g @ table[vocab].T - (g * x.detach()).sum(-1, keepdim=True)  # B × L × V
    real = a.bool().clone()
    real[:, 0] = False
    real[torch.arange(len(a)), a.sum(1) - 1] = False
    real &= ~piece[i]  # a one-token word: neither a piece nor followed by one
    real[:, :-1] &= ~piece[i[:, 1:]]
    best, word = gain.max(-1)
    best[~real] = float("-inf")
    pos = best.topk(min(k, best.shape[1]), dim=1).indices
    rows = torch.arange(len(i)).unsqueeze(1).expand_as(pos)
    ok = real[rows, pos]  # lines shorter than k real tokens swap fewer
    new = i.clone()
    new[rows[ok], pos[ok]] = vocab[word[rows, pos][ok]]
    return new


def adversarial_loss(student, teacher, i, a, vocab, k: int, rows: int, bf16: bool) -> torch.Tensor:
    """1 - cos of student and teacher on the first `rows` lines of the batch after `hotflip`."""
    i, a = i[:rows], a[:rows]
    new = hotflip(student, teacher, i, a, vocab, k)
    with torch.no_grad():
        t = _pooled(teacher, a, input_ids=new)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        s = _pooled(student, a, input_ids=new)
    return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
