"""The prune pass: plan-time checks, and the dispatch by form and method to the torch masked
(`torch_masked`), torch structured (`torch_structured`), ONNX masked (`onnx_masked`) and ONNX
structured (`onnx_structured`) paths; then the compressed size and, for N:M on CUDA, the
sparse-kernel benchmark."""

from __future__ import annotations

from typing import Any

from optimize.pass_api import Pass, PassResult
from passes.prune import util as U
from passes.prune.config import PruneConfig


class PrunePass(Pass):
    name = "prune"
    summary = (
        "Zero the smallest weights (layer-wise or global), remove whole channels/neurons "
        "(structured, torch), or impose an N:M pattern; on torch or straight on ONNX initializers."
    )
    config_cls = PruneConfig
    accepts = frozenset({"torch", "onnx"})
    cacheable = True
    sparsifies = True

    config: PruneConfig

    def check(self, plan: Any) -> None:
        """The pass's settings, and each candidate of `shapes` as the settings it would run with."""
        from passes.prune.config import shape_config

        for cfg in [self.config, *(shape_config(self.config, s) for s in self.config.shapes)]:
            self._check_config(plan, cfg)

    def _check_config(self, plan: Any, cfg: PruneConfig) -> None:
        from optimize.errors import ConfigError

        key = f"{plan.key}.prune"
        if plan.form_at_pass == "onnx":
            torch_only = {
                "importance": cfg.importance in ("taylor", "fisher"),
                "head_sparsity": cfg.head_sparsity == "auto" or cfg.head_sparsity > 0,
                "sparsity": cfg.sparsity == "auto",
                "steps": cfg.steps > 1, "refit": cfg.refit,
                "drop_layers": bool(cfg.drop_layers), "drop_attention": bool(cfg.drop_attention),
                "qk_rank": bool(cfg.qk_rank), "shapes": bool(cfg.shapes),
            }
            for field_name, used in torch_only.items():
                if used:
                    raise ConfigError(
                        f"{field_name} needs a torch model; the model is ONNX at this point", key=f"{key}.{field_name}"
                    )
        resizes = cfg.sparsity != 0 or cfg.head_sparsity != 0 or bool(cfg.layer_sparsity)
        if cfg.method == "structured" and resizes and plan.form_at_pass == "torch" and any(p.name == "quantize" for p in plan.earlier):
            raise ConfigError("structured pruning cannot resize the layers quantization-aware training wraps; "
                              "put the structured prune pass before quantize", key=f"{key}.method")
        if cfg.refit and not (plan.has_data("calibration") or plan.has_data("train")):
            raise ConfigError("refit fits layers on data: declare data.calibration or data.train", key=f"{key}.refit")
        for what in ("drop_layers", "drop_attention"):
            value = getattr(cfg, what)
            if isinstance(value, int) and value and not (plan.has_data("calibration") or plan.has_data("train")):
                noun = "blocks" if what == "drop_layers" else "attention sublayers"
                raise ConfigError(f"{what}: N chooses the {noun} on data: declare data.calibration or data.train "
                                  "(or list the block indices)", key=f"{key}.{what}")
        if cfg.attention_stand_in != "none" and not (plan.has_data("calibration") or plan.has_data("train")):
            raise ConfigError("attention_stand_in fits on data: declare data.calibration or data.train",
                              key=f"{key}.attention_stand_in")
        if cfg.qk_rank and not (plan.has_data("calibration") or plan.has_data("train")):
            raise ConfigError("qk_rank fits queries and keys on data: declare data.calibration or data.train",
                              key=f"{key}.qk_rank")
        if cfg.importance in ("taylor", "fisher") and not (plan.has_data("calibration") or plan.has_data("train")):
            raise ConfigError(
                f"importance: {cfg.importance} ranks channels by gradients on data: declare data.calibration or data.train",
                key=f"{key}.importance",
            )
        if "auto" in (cfg.sparsity, cfg.head_sparsity):
            self._check_search(plan, key)
        if cfg.finetune_epochs and not plan.has_data("train"):
            raise ConfigError("finetune_epochs needs training data: declare data.train", key=f"{key}.finetune_epochs")
        if cfg.method == "structured" and plan.form_at_pass == "torch" and not plan.has_input_spec:
            raise ConfigError(
                "structured pruning traces the model with example inputs: declare model.inputs "
                "(name, shape, dtype)",
                key="model.inputs",
            )

    def _check_search(self, plan: Any, key: str) -> None:
        from optimize.errors import ConfigError
        from passes.prune.search import threshold

        if not (plan.has_data("train") and plan.has_data("eval")):
            raise ConfigError(
                "sparsity auto distills and measures each probe: declare data.train and data.eval", key=f"{key}.sparsity"
            )
        threshold(self.config, plan)

    def run(self, model: Any, ctx: Any) -> PassResult:
        if model.form == "onnx":
            result = self._run_onnx(model, ctx)
            big = max(U.onnx_weight_bytes(model.onnx_path), U.onnx_weight_bytes(result.model.onnx_path))
            if big > U.COMPRESS_LIMIT_BYTES:
                result.metrics["compressed_bytes"] = _compressed_unmeasured(big)
                return result
            before = U.onnx_weight_arrays(model.onnx_path)
            after = U.onnx_weight_arrays(result.model.onnx_path)
        else:
            result = self._run_torch(model, ctx)
            before = U.torch_weight_arrays(model.module)
            after = U.torch_weight_arrays(result.model.module)
        result.metrics["compressed_bytes"] = _compressed(before, after)
        result.notes.extend(_unmatched_patterns(self.config, _layer_names(result.model)))
        return result

    def _run_onnx(self, model: Any, ctx: Any) -> PassResult:
        if self.config.method == "structured":
            from passes.prune.onnx_structured import run_onnx_structured

            return run_onnx_structured(self.config, self.name, model, ctx)
        from passes.prune.onnx_masked import run_onnx

        return run_onnx(self.config, self.name, model, ctx)

    def _run_torch(self, model: Any, ctx: Any) -> PassResult:
        cfg = self.config
        home = next((p.device for p in model.module.parameters()), "cpu")
        with U.on_run_device(model.module, ctx) as device:
            if cfg.method == "structured":
                result = self._run_structured(model, ctx)
            else:
                from passes.prune.torch_masked import run_masked

                result = run_masked(cfg, model, ctx)
            result.model.module.to(home)  # handed on where the model came (the CPU): the next pass and the export expect it
        result.metrics["device"] = device
        if cfg.method == "nm" and str(getattr(ctx, "device", "cpu")).startswith("cuda") and cfg.nm_gpu_benchmark:
            from passes.prune.gpu import nm_gpu_benchmark

            result.metrics["nm_gpu"] = nm_gpu_benchmark(result.model, ctx)
        return result

    def _run_structured(self, model: Any, ctx: Any) -> PassResult:
        cfg = self.config
        if cfg.shapes:  # each candidate runs through this method with its own config
            from passes.prune.shapes import choose

            return choose(type(self), cfg, model, ctx)
        cuts: dict[str, dict[str, Any]] = {}
        original = model
        for what in ("drop_layers", "drop_attention"):
            if getattr(cfg, what):
                from passes.prune.blocks import run_cut

                kept = cuts["drop_layers"]["kept"] if "drop_layers" in cuts else None
                model, cuts[what] = run_cut(cfg, self.name, model, ctx, what, original, kept)
        gone = cuts.get("drop_attention", {})
        gone = gone.get("removed_original", gone.get("removed")) if cfg.attention_stand_in != "none" else None
        if gone:  # before head / FFN pruning, so their importance is measured with the stand-ins in place
            from passes.prune.stand_in import stand_in_all

            stand_in_all(cfg, self.name, model, original, gone, ctx, measure=False)
        moments = None
        if cfg.qk_rank:  # on the inputs of the model before its heads / FFN neurons go
            from passes.prune.lowrank_qk import moments_on_data

            moments = moments_on_data(cfg, self.name, model, ctx)
        result = self._narrow(model, ctx, cuts, original)
        if moments is not None:
            from passes.prune.lowrank_qk import apply

            result.metrics["qk_rank"] = apply(cfg, result.model, *moments, original, ctx)
        if gone:  # refitted to the model as it now is
            from passes.prune.stand_in import stand_in_all

            result.metrics["attention_stand_in"] = stand_in_all(cfg, self.name, result.model, original, gone, ctx)
        if moments is not None or gone:
            _recount(result, ctx)
        return result

    def _narrow(self, model: Any, ctx: Any, cuts: dict[str, dict[str, Any]], original: Any) -> PassResult:
        """Head / FFN pruning (searched for `auto`) after any cuts; the cuts' metrics merged in."""
        from passes.prune.torch_structured import run_structured

        cfg = self.config
        first = next(iter(cuts.values()), None)  # its counts are from before any unit went
        if first is not None and cfg.sparsity == 0 and cfg.head_sparsity == 0 and not cfg.layer_sparsity:  # cuts only
            last = list(cuts.values())[-1]
            metrics = {"method": "structured", **cuts, "params_before": first["params_before"],
                       "macs_before": first["macs_before"], "params_after": last["params_after"],
                       "macs_after": last["macs_after"], "macs_batch": last["macs_batch"]}
            return PassResult(model, metrics=_reductions(metrics))
        cfg, head_notes = _without_heads(cfg, model.module)
        searched: tuple[Any, ...] = ()
        if "auto" in (cfg.sparsity, cfg.head_sparsity):
            from passes.prune.search import search

            cfg, *searched = search(cfg, self.name, model, ctx, origin=self.config)
        result = run_structured(cfg, self.name, model, ctx, reference=original)
        result.notes.extend(head_notes)
        if searched:
            result.metrics["search"] = searched[0]
            result.notes.extend(searched[1])
        if first is not None:  # the counts from before the blocks went
            result.metrics.update(**cuts, params_before=first["params_before"], macs_before=first["macs_before"])
            _reductions(result.metrics)
            for row in result.metrics.get("per_step") or []:  # against the model before its blocks went, as above
                if row.get("params") is not None:
                    row["params_removed"] = round(1 - row["params"] / first["params_before"], 6)
        return result


def _recount(result: PassResult, ctx: Any) -> None:
    """The result's params / MACs after, and their reductions, counted again on its model."""
    from passes.prune import util as U
    from passes.prune.torch_common import example_args

    module = result.model.module
    result.metrics.update(params_after=int(sum(p.numel() for p in module.parameters())),
                          macs_after=U.torch_macs(module, example_args(result.model, ctx)))
    _reductions(result.metrics)


def _reductions(m: dict[str, Any]) -> dict[str, Any]:
    """params_removed and macs_reduction from the before / after counts in `m`."""
    pb, pa, mb, ma = (m.get(k) for k in ("params_before", "params_after", "macs_before", "macs_after"))
    m["params_removed"] = round(1 - pa / pb, 6) if pb and pa is not None else None
    m["macs_reduction"] = round(mb / ma, 4) if mb and ma else None
    return m


_FORMULA = "zlib (DEFLATE, level 6) of the weights' float bytes, as in a .zip"


def _compressed(before: Any, after: Any) -> dict[str, Any]:
    raw_b, zip_b = U.compressed_bytes(before)
    raw_a, zip_a = U.compressed_bytes(after)
    return {
        "formula": _FORMULA,
        "raw_before": raw_b, "raw_after": raw_a, "zip_before": zip_b, "zip_after": zip_a,
        "ratio": round(zip_b / zip_a, 4) if zip_a else None,
    }


def _compressed_unmeasured(big: int) -> dict[str, Any]:
    return {
        "formula": _FORMULA,
        "raw_before": None, "raw_after": None, "zip_before": None, "zip_after": None, "ratio": None,
        "reason": f"not measured: {big} bytes of weights, over {U.COMPRESS_LIMIT_BYTES} "
                  "(zlib would add minutes)",
    }


def _without_heads(cfg: Any, module: Any) -> tuple[Any, list[str]]:
    """head_sparsity on a model without attention heads: 0, with a note (a search would probe, and
    report choosing, head ratios that change nothing)."""
    from passes.prune.transformer import has_heads

    if cfg.head_sparsity == 0 or has_heads(module):
        return cfg, []
    note = f"head_sparsity {cfg.head_sparsity}: the model has no attention heads to remove (head_sparsity 0)"
    return cfg.model_copy(update={"head_sparsity": 0.0}), [note]


def _layer_names(model: Any) -> set[str]:
    """Every name a layer pattern is matched against, as the selectors match them (torch_common.
    selected): torch module names and NAME.weight (the model after any dropped blocks: patterns see
    the new numbers); ONNX weight keys, node names and NODE.weight, initializer names."""
    if model.form == "torch":
        names = {n for n, _ in model.module.named_modules()}
        return names | {f"{n}.weight" for n in names} | {n for n, _ in model.module.named_parameters()}
    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    proto = onnx_io.load(model.onnx_path, load_external_data=False)
    found = {i.name for i in proto.graph.initializer}
    for u in iter_weight_uses(proto):
        found |= {u.key, u.name, u.node.name, f"{u.node.name}.weight"}
    return found


def _unmatched_patterns(cfg: Any, names: set[str]) -> list[str]:
    """A note per include / exclude / layer_sparsity glob that matches no layer: a typo there
    otherwise prunes at the default ratio without a word."""
    from fnmatch import fnmatchcase

    fields = {"include": cfg.include, "exclude": cfg.exclude, "layer_sparsity": list(cfg.layer_sparsity)}
    return [
        f"{field}: {pattern!r} matches no layer of the model"
        for field, patterns in fields.items() for pattern in patterns
        if not any(fnmatchcase(n, pattern) for n in names)
    ]
