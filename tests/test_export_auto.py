"""`exporter: auto` on a transformers model (optimize/export_candidates.py, passes/export.py): every
candidate export is recorded, parity against torch rejects a wrong one, and the measured fastest
is kept. A tiny random BERT built from a config (nothing downloaded); timings are injected so the
choice is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from optimize import export_candidates as ec  # noqa: E402
from optimize.config import load_config_text  # noqa: E402
from optimize.loaders import load_model  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat runs fast red blue".split()]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert") / "model"
    folder.mkdir()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    cfg = load_config_text("schema_version: 1\npasses: []\n")
    return load_model(str(folder), model_cfg=cfg.model)


def fake_timer(order: list[str], seen: list[dict[str, Path]]):
    """Latencies that put the candidates in `order` (fastest first), with per-round noise."""
    def timer(models, inputs):
        seen.append(dict(models))
        rng = np.random.default_rng(0)
        return {name: list(10.0 * (1 + order.index(name)) * rng.uniform(0.97, 1.03, size=9)) for name in models}
    return timer


@pytest.mark.slow  # three exports (dynamo ~10 s), each quantized
def test_auto_records_every_candidate_and_keeps_the_measured_fastest(bert, tmp_path, monkeypatch):
    real_parity = ec.parity_failure

    def parity(path, probes, refs):  # the fused export reads as wrong: it must be rejected, not timed
        worst, why = real_parity(path, probes, refs)
        assert why is None and worst < 1e-4  # every export of this model agrees with torch
        return (worst, "parity failed: injected") if "fusion" in Path(path).name else (worst, why)

    monkeypatch.setattr(ec, "parity_failure", parity)
    seen: list[dict[str, Path]] = []
    inputs = {s.name: s.random(2, np.random.default_rng(0)) for s in bert.inputs}
    out = tmp_path / "model.onnx"
    handle, record = ec.choose_export(bert, out, opset=18, inputs=inputs, quant=ec.QuickQuant(reduce_range=True),
                                      timer=fake_timer(["dynamo", "torchscript-eager"], seen))
    by_name = {c["name"]: c for c in record["candidates"]}
    assert set(by_name) == {"torchscript-eager", "torchscript-eager+fusion", "dynamo"}
    assert record["chosen"] == "dynamo" and by_name["dynamo"]["status"] == "chosen"
    assert by_name["torchscript-eager"]["status"].startswith("slower: 2.0")
    assert by_name["torchscript-eager"]["latency_vs_chosen"] == pytest.approx(2.0, rel=0.1)
    assert by_name["torchscript-eager+fusion"]["status"] == "parity failed: injected"
    assert by_name["torchscript-eager+fusion"]["latency_ms"] is None
    assert set(seen[0]) == {"dynamo", "torchscript-eager"}  # only the usable candidates were timed
    assert all(p.name.endswith(".int8.onnx") for p in seen[0].values())  # timed as the pipeline will run them
    assert record["timed_as"].startswith("dynamic int8") and "reduce_range" in record["timed_as"]
    for c in by_name.values():
        assert c["nodes"] and c["export_s"] is not None
    # the chosen export is the handle's file, and it computes what torch does
    assert handle.onnx_path == out and out.is_file() and "dynamo" in handle.exporter
    assert not (tmp_path / "export-candidates").exists()
    probes = ec.parity_probes(bert)
    assert real_parity(out, probes, ec.torch_outputs(bert, probes))[1] is None


def test_parity_rejects_an_export_that_differs_from_torch(bert, tmp_path):
    from optimize.export import export_to_onnx

    path = tmp_path / "ts.onnx"
    export_to_onnx(bert, path, exporter="torchscript", attention="eager")
    probes = ec.parity_probes(bert)
    refs = ec.torch_outputs(bert, probes)
    assert ec.parity_failure(path, probes, refs)[1] is None
    worst, why = ec.parity_failure(path, probes, [r * 1.01 for r in refs])
    assert why is not None and why.startswith("parity failed") and worst > ec.PARITY_RTOL
    # the second probe is longer and pads the end of rows: a shape- or mask-baking export would fail it
    mask = probes[1]["attention_mask"]
    assert probes[1]["input_ids"].shape[1] > probes[0]["input_ids"].shape[1] and (mask[1:] == 0).any()


def test_rank_picks_the_lowest_median_ratio():
    cands = [ec.Candidate("a", "torchscript"), ec.Candidate("b", "dynamo"), ec.Candidate("c", "torchscript")]
    times = {"a": [10.0, 30.0, 10.0], "b": [9.0, 28.0, 9.5], "c": [12.0, 20.0, 12.0]}
    best = ec.rank(cands, times)
    assert best.name == "b" and best.status == "chosen"
    assert cands[0].status.startswith("slower") and cands[0].ratio == pytest.approx(30 / 28)  # median of 10/9, 30/28, 10/9.5


def test_a_speed_tie_goes_to_the_candidate_closest_to_torch_after_int8():
    cands = [ec.Candidate("a", "torchscript", int8_min_cosine=0.9844), ec.Candidate("b", "torchscript", int8_min_cosine=0.9805),
             ec.Candidate("c", "dynamo", int8_min_cosine=0.9990)]
    times = {"a": [10.2, 10.2, 10.2], "b": [10.0, 10.0, 10.0], "c": [12.0, 12.0, 12.0]}  # a within 2 %, c 20 % slower
    best = ec.rank(cands, times)
    assert best.name == "a" and best.status.startswith("chosen: as fast as the fastest")
    assert cands[1].status.startswith("speed tie") and "0.9805 vs 0.9844" in cands[1].status
    assert cands[2].status.startswith("slower")  # better quality does not buy a slower export


def test_a_candidate_as_fast_in_a_quarter_of_the_rounds_is_a_tie():
    cands = [ec.Candidate("a", "torchscript", int8_min_cosine=0.98), ec.Candidate("b", "torchscript", int8_min_cosine=0.99)]
    times = {"a": [10.0] * 8, "b": [12.0, 12.0, 9.9, 12.0, 9.9, 12.0, 12.0, 12.0]}  # median 1.2x, but faster in 2 of 8
    assert ec.rank(cands, times).name == "b"
    times["b"] = [12.0, 12.0, 9.9, 12.0, 12.0, 12.0, 12.0, 12.0]  # faster in 1 of 8 rounds only: a wins
    assert ec.rank(cands, times).name == "a"


def test_without_int8_cosines_the_fastest_wins():
    cands = [ec.Candidate("a", "torchscript"), ec.Candidate("b", "torchscript", int8_min_cosine=0.99)]
    best = ec.rank(cands, {"a": [10.0, 10.0], "b": [10.1, 10.1]})
    assert best.name == "a" and best.status == "chosen"


def _heads_removed(handle, keep: list[list[int]]):
    """A copy of `handle` with each layer's attention keeping only the heads in `keep` (its Q/K/V
    rows and output-projection columns sliced, as structured pruning leaves them)."""
    import copy

    module = copy.deepcopy(handle.module)
    layers = [m for m in module.modules() if type(m).__name__ == "BertLayer"]
    for layer, heads in zip(layers, keep, strict=True):
        att, out = layer.attention.self, layer.attention.output.dense
        d = att.attention_head_size
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        for name in ("query", "key", "value"):
            lin = getattr(att, name)
            new = torch.nn.Linear(lin.in_features, len(rows))
            new.weight.data, new.bias.data = lin.weight.data[rows].clone(), lin.bias.data[rows].clone()
            setattr(att, name, new)
        proj = torch.nn.Linear(len(rows), out.out_features)
        proj.weight.data, proj.bias.data = out.weight.data[:, rows].clone(), out.bias.data.clone()
        layer.attention.output.dense = proj
        att.num_attention_heads, att.all_head_size = len(heads), len(rows)
    return handle.replace(module=module)


def test_fusion_after_heads_are_pruned_gets_each_layers_head_count(bert, tmp_path):
    """ONNX Runtime's fusion writes the config's head count (4) on every Attention; the export sets
    each from its weights, and the fused file agrees with torch."""
    import onnx

    assert [c.name for c in ec.candidates_for(bert)[0]] == ["torchscript-eager", "torchscript-eager+fusion", "dynamo"]
    pruned = _heads_removed(bert, [[0, 2, 3], [1, 3]])
    build, skipped = ec.candidates_for(pruned)
    fusion = next(c for c in build if c.name == "torchscript-eager+fusion")
    assert not skipped and ec._build(fusion, pruned, tmp_path, 18) is not None, fusion.status
    heads = [next(a.i for a in n.attribute if a.name == "num_heads")
             for n in onnx.load(str(fusion.path)).graph.node if n.op_type == "Attention"]
    assert heads == [3, 2]
    probes = ec.parity_probes(pruned)
    assert ec.parity_failure(fusion.path, probes, ec.torch_outputs(pruned, probes))[1] is None


def test_export_pass_times_as_the_later_quantize_pass_quantizes():
    from passes.export import _later_quantize

    class Ctx:
        config = load_config_text("schema_version: 1\npasses:\n  - {type: quantize, mode: dynamic, "
                                  "per_channel: false, reduce_range: true}\n")

    q = _later_quantize(Ctx)
    assert (q.per_channel, q.reduce_range, q.weight_type) == (False, True, "int8")
    Ctx.config = load_config_text("schema_version: 1\npasses:\n  - {type: quantize, mode: weight_only, bits: 4}\n")
    assert _later_quantize(Ctx) is None  # MatMulNBits: ranked in float


def test_export_pass_times_candidates_at_the_measured_batch(bert, tmp_path):
    from optimize.context import RunContext
    from passes.export import _timing_inputs

    cfg = load_config_text("schema_version: 1\npasses: []\nmeasure: {batch: 3}\n")
    ctx = RunContext(config=cfg, work_dir=tmp_path, inputs=bert.inputs, base_dir=tmp_path)
    feed = _timing_inputs(bert, ctx)
    assert set(feed) == set(bert.input_names) and all(v.shape == (3, 16) for v in feed.values())


@pytest.mark.slow  # three real exports of a tiny BERT, timed
def test_export_pass_auto_reports_the_choice(bert, tmp_path):
    from optimize.context import RunContext
    from passes.export import ExportConfig, ExportPass

    cfg = load_config_text("schema_version: 1\npasses: []\nmeasure: {batch: 2, repeat: 3, warmup: 1}\n")
    ctx = RunContext(config=cfg, work_dir=tmp_path, threads=1, inputs=bert.inputs, base_dir=tmp_path)
    result = ExportPass(ExportConfig()).run(bert, ctx)
    choice = result.metrics["export_choice"]
    assert choice["timed_as"] == "float32"  # no quantize pass follows
    assert [c["name"] for c in choice["candidates"]] == ["torchscript-eager", "torchscript-eager+fusion", "dynamo"]
    chosen = [c for c in choice["candidates"] if c["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["name"] == choice["chosen"]
    assert all(c["latency_ms"] > 0 for c in choice["candidates"])
    assert result.model.onnx_path.is_file() and "measured among 3" in result.metrics["exporter"]
    assert result.notes[0].startswith(f"exporter auto kept {choice['chosen']}") and "2×16" in result.notes[0]


def test_an_attention_the_model_refuses_is_an_export_error(bert, tmp_path, monkeypatch):
    from optimize.export import ExportError, export_to_onnx

    def refuse(self, implementation):
        raise ValueError(f"{implementation} is not supported\ndetails")

    monkeypatch.setattr(transformers.PreTrainedModel, "set_attn_implementation", refuse)
    with pytest.raises(ExportError, match="^attention eager: eager is not supported$"):
        export_to_onnx(bert, tmp_path / "m.onnx", exporter="torchscript", attention="eager")
