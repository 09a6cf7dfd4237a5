"""The prune pass's `shapes`: candidate shapes timed on this machine, the first to reach
`target_speedup` kept (passes/prune/shapes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.prune.config import PruneConfig, shape_config
from passes.prune.shapes import _pick

SHAPES = [{"drop_attention": [2]}, {"drop_attention": [2, 3], "sparsity": 0.0}]


def test_shapes_need_a_target_structured_and_no_auto_ratio():
    ok = PruneConfig(method="structured", sparsity=0.333, shapes=SHAPES, target_speedup=1.25)
    second = shape_config(ok, ok.shapes[1])
    assert (second.drop_attention, second.sparsity, second.shapes, second.target_speedup) == ([2, 3], 0.0, [], None)
    assert shape_config(ok, ok.shapes[0]).sparsity == 0.333  # what a shape leaves out is the pass's own
    bad = {
        "set target_speedup": {"method": "structured", "shapes": SHAPES},
        "list the candidate shapes": {"method": "structured", "target_speedup": 1.2},
        "shapes applies to method: structured": {"shapes": SHAPES, "target_speedup": 1.2},
        "use one of them": {"method": "structured", "sparsity": "auto", "shapes": SHAPES, "target_speedup": 1.2},
        r"shapes\[0\] \(attention_stand_in: mean\): attention_stand_in stands in": {
            "method": "structured", "shapes": [{"attention_stand_in": "mean"}], "target_speedup": 1.2},
        "Extra inputs are not permitted": {"method": "structured", "shapes": [{"heads": 1}], "target_speedup": 1.2},
    }
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=message):
            PruneConfig(**fields)


def test_the_plan_checks_every_shape_as_the_settings_it_runs_with():
    from types import SimpleNamespace

    from optimize.errors import ConfigError
    from passes.prune.prune_pass import PrunePass

    cfg = PruneConfig(method="structured", sparsity=0.25, shapes=[{}, {"drop_attention": 1}], target_speedup=1.2)
    plan = SimpleNamespace(key="passes[0]", form_at_pass="torch", earlier=[], has_input_spec=True,
                           has_data=lambda role: False)
    with pytest.raises(ConfigError, match="drop_attention: N chooses the attention sublayers on data"):
        PrunePass(cfg).check(plan)  # the second shape counts its sublayers on data the plan lacks
    PrunePass(cfg.model_copy(update={"shapes": cfg.shapes[:1]})).check(plan)
    with pytest.raises(ConfigError, match="shapes needs a torch model; the model is ONNX at this point"):
        PrunePass(cfg).check(SimpleNamespace(**{**vars(plan), "form_at_pass": "onnx"}))


def _rows(*speedups):
    return [{"speedup": s} if s is not None else {"reason": "not timed: ExportError: no"} for s in speedups]


def test_the_first_shape_to_reach_the_target_is_kept_else_the_fastest():
    cfg = PruneConfig(method="structured", shapes=[{}, {}, {}], target_speedup=1.25)
    assert _pick(cfg, _rows(1.21, 1.29, 1.40))[0] == 1  # the first in order, not the fastest
    i, why = _pick(cfg, _rows(1.21, 1.29, 1.40))
    assert "1.290x ≥ 1.25x, the first in order to reach it (shape 0 1.210x)" == why
    assert _pick(cfg, _rows(1.30, 1.40, None))[0] == 0
    i, why = _pick(cfg, _rows(1.10, None, 1.20))
    assert i == 2 and why == "no shape reached 1.25x; the fastest (1.200x)"
    assert _pick(cfg, _rows(None, None, None))[0] == 0


def test_the_report_tabulates_every_shape_and_marks_the_kept_one():
    from optimize.prune_report import shapes_markdown

    shapes = {"target_speedup": 1.25, "through": "the export only", "formula": "F", "chosen": 1, "why": "W",
              "rows": [{"shape": {"drop_attention": [2]}, "ms": 50.0, "input_ms": 60.0, "speedup": 1.2,
                        "interval": [1.19, 1.22], "untrained_cosine": {"mean": 0.81, "min": 0.67}, "macs_reduction": 1.4},
                       {"shape": {}, "reason": "not timed: X"}]}
    text = "\n".join(shapes_markdown(shapes))
    assert "target 1.25x over the input model, both through the export only; input 60 ms; F). Kept shape 1: W." in text
    assert "| 0 | drop_attention: [2] | 50 | 1.2x [1.19, 1.22] | 0.81 / 0.67 | 1.4 |  |" in text
    assert "| 1 | the pass's own | null | not timed: X | null / null | null | **kept** |" in text
    assert shapes_markdown({"rows": []}) == []


@pytest.mark.slow  # ~20 s: two shapes pruned, exported, quantized and timed, then the pipeline's own steps
def test_shapes_through_the_pipeline_time_each_shape_after_the_quantize_pass_if_any(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from test_frameworks_hf import four_block_bert

    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.report_md import to_markdown

    folder, base = four_block_bert(tmp_path, monkeypatch)
    prune = ("  - {type: prune, method: structured, sparsity: 0.5, target_speedup: TARGET, shape_rounds: 5, "
             "shapes: [{drop_attention: [1]}, {drop_attention: [1, 2], sparsity: 0.0}]}\n")
    for target, kept, quantize in (("0.01", 0, True), ("100", None, True), ("0.02", 0, False)):
        head = base.replace("data: {train: {source: train.txt}}", "data: {train: {source: train.txt}, eval: {source: train.txt}}")
        Path(f"s{target}.yaml").write_text(head + "passes:\n" + prune.replace("TARGET", target)
                                           + ("  - {type: quantize, mode: dynamic}\n" if quantize else ""))
        report = pipeline.run(RunOptions(model=str(folder), config=f"s{target}.yaml", threads=1))
        step = next(s for s in report.steps if s.type == "prune")
        shapes = step.metrics["shapes"]
        rows = shapes["rows"]
        assert [r["shape"] for r in rows] == [{"drop_attention": [1]}, {"drop_attention": [1, 2], "sparsity": 0.0}]
        assert all(r["speedup"] > 0 and r["interval"][0] <= r["speedup"] <= r["interval"][1] for r in rows)
        assert all(0 < r["untrained_cosine"]["min"] <= r["untrained_cosine"]["mean"] <= 1 for r in rows)
        assert shapes["through"].startswith("the export and the pipeline's quantize pass" if quantize else "the export only")
        fastest = max(range(2), key=lambda i: rows[i]["speedup"])
        assert shapes["chosen"] == (fastest if kept is None else kept)
        assert step.metrics["drop_attention"]["removed"] == ([1] if shapes["chosen"] == 0 else [1, 2])
        ffn = [e for e in step.metrics.get("layers", []) if e["name"].endswith("intermediate.dense")]
        assert all(e["shape_after"][0] == 32 for e in ffn) and (len(ffn) == 4) == (shapes["chosen"] == 0)
        assert report.status == "ok" and f"Kept shape {shapes['chosen']}" in to_markdown(report)


def test_the_shapes_are_timed_the_configured_way_when_torchscript_cannot_export_the_input(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from passes.prune import shapes as shapes_mod

    calls = []

    def deployed(ctx, qcfg, model, folder, how):
        calls.append(how["exporter"])
        if how["exporter"] == "torchscript":
            raise RuntimeError("TorchScript cannot trace this")
        return tmp_path / "input.onnx"

    monkeypatch.setattr(shapes_mod, "_deployed", deployed)
    monkeypatch.setattr(shapes_mod, "_timing_export",
                        lambda ctx, model: {"exporter": "torchscript", "attention": "eager", "label": "TorchScript"})
    ctx = SimpleNamespace(config=SimpleNamespace(output=SimpleNamespace(exporter="auto")))
    how, base = shapes_mod._base(ctx, None, object(), tmp_path / "input")
    assert calls == ["torchscript", None] and base == tmp_path / "input.onnx" and how["exporter"] is None
    assert how["label"] == "exporter auto (TorchScript failed: TorchScript cannot trace this)"
