"""Hugging Face folders (extra `[hf]`): a tiny BERT built in code and saved with `save_pretrained`
together with a WordPiece tokenizer built in the test (nothing is downloaded). Loading for each
task, mean pooling over the attention mask, sentence-transformers pooling, text data tokenized
with the folder's tokenizer, and the whole pipeline from the folder: heads and FFN neurons
pruned, distilled on a text file, int8, ONNX + tokenizer written, embedding cosine reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from optimize.config import load_config_text  # noqa: E402
from optimize.context import RunContext  # noqa: E402
from optimize.errors import ConfigError, DataError, ModelLoadError  # noqa: E402
from optimize.loaders import load_model  # noqa: E402

WORDS = (
    "the a cat dog bird sat on mat runs fast slow red blue big small house tree sings quietly loudly "
    "green old young sees likes near under over"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed", "##ing"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64,
    )


def bert_config(**kw):
    from transformers import BertConfig

    kw = {"num_hidden_layers": 2, **kw}
    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **kw)


def save_folder(path: Path, model_cls: str = "BertModel", **cfg_kw) -> Path:
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(bert_config(**cfg_kw))
    model.save_pretrained(str(path))
    make_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_folder(tmp_path_factory.mktemp("hf") / "bert")


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def model_cfg(text: str = ""):
    return load_config_text("schema_version: 1\npasses: []\n" + text)


# ---------------------------------------------------------------------------- loading


def test_a_folder_given_by_a_relative_path_keeps_an_absolute_tokenizer_path(bert_dir, monkeypatch):
    # the quantize pass reads data (per_token: auto) from inside a scratch directory
    monkeypatch.chdir(bert_dir.parent)
    handle = load_model(bert_dir.name, model_cfg=model_cfg().model)
    assert handle.tokenizer.path == bert_dir.resolve() and handle.tokenizer.path.is_absolute()


def test_feature_extraction_folder_mean_pools_over_the_mask(bert_dir):
    cfg = model_cfg()
    handle = load_model(str(bert_dir), model_cfg=cfg.model)
    assert handle.form == "torch" and handle.outputs == ["sentence_embedding"]
    assert cfg.model.task == "embedding"  # set from the folder (task was not given)
    ids, mask = handle.inputs[:2]
    assert (ids.name, ids.dtype, ids.shape, ids.high) == ("input_ids", "int64", ("batch", "sequence"), len(VOCAB))
    assert (mask.name, mask.dtype, mask.low, mask.high) == ("attention_mask", "int64", 1, 2)
    assert ids.concrete_shape(3) == (3, 16)  # example sequence length, not 1
    assert handle.tokenizer is not None and handle.tokenizer.path == bert_dir
    # padding does not change a sentence's embedding: mean over the attention mask
    tok = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
    short = tok(["the cat sat"], return_tensors="pt")
    padded = tok(["the cat sat", "a big dog runs fast under the old tree"], padding=True, return_tensors="pt")
    with torch.no_grad():
        alone = handle.module(short["input_ids"], short["attention_mask"])
        batch = handle.module(padded["input_ids"], padded["attention_mask"])
        hidden = handle.module.model(input_ids=short["input_ids"]).last_hidden_state
    assert batch.shape == (2, 32)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], hidden[0].mean(0), atol=1e-5, rtol=1e-5)


def test_sentence_transformers_folder_pools_as_configured(tmp_path, bert_dir):
    st = tmp_path / "st"
    save_folder(st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    ))
    (st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24, "do_lower_case": False}))
    handle = load_model(str(st), model_cfg=model_cfg().model)
    assert handle.tokenizer.max_length == 24
    tok = transformers.AutoTokenizer.from_pretrained(str(st))
    enc = tok(["the cat sat on the mat"], return_tensors="pt")
    with torch.no_grad():
        emb = handle.module(enc["input_ids"], enc["attention_mask"])
        cls = handle.module.model(**enc).last_hidden_state[:, 0]
    torch.testing.assert_close(emb, torch.nn.functional.normalize(cls, dim=-1), atol=1e-5, rtol=1e-5)
    assert float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


def test_classification_folders(tmp_path):
    seq = save_folder(tmp_path / "seq", "BertForSequenceClassification", num_labels=3,
                      id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    cfg = model_cfg()
    h = load_model(str(seq), model_cfg=cfg.model)
    assert cfg.model.task == "classification" and h.outputs == ["logits"]
    assert h.tokenizer.label2id == {"neg": 0, "neu": 1, "pos": 2}
    args = [torch.from_numpy(s.random(2, np.random.default_rng(0))) for s in h.inputs]
    assert tuple(h.module(*args).shape) == (2, 3)
    tokc = save_folder(tmp_path / "tok", "BertForTokenClassification", num_labels=5)
    h = load_model(str(tokc), model_cfg=model_cfg().model)
    args = [torch.from_numpy(s.random(2, np.random.default_rng(0))) for s in h.inputs]
    assert tuple(h.module(*args).shape) == (2, 16, 5)  # per-token logits
    # a folder whose head optimize does not load: one line; task: embedding uses its encoder
    mlm = save_folder(tmp_path / "mlm", "BertForMaskedLM")
    with pytest.raises(ModelLoadError, match="BertForMaskedLM is not supported.*model.task: embedding"):
        load_model(str(mlm), model_cfg=model_cfg().model)
    h = load_model(str(mlm), model_cfg=model_cfg("model: {task: embedding}\n").model)
    assert h.outputs == ["sentence_embedding"]
    with pytest.raises(ConfigError, match="no classification head"):
        load_model(str(tmp_path / "mlm"), model_cfg=model_cfg("model: {task: classification}\n").model)


def test_folder_without_weights_or_tokenizer(tmp_path):
    d = save_folder(tmp_path / "b")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(d))
    d = tmp_path / "c"
    torch.manual_seed(0)
    transformers.BertModel(bert_config()).save_pretrained(str(d))
    with pytest.raises(ModelLoadError, match="no tokenizer files.*save_pretrained"):
        load_model(str(d))


# ---------------------------------------------------------------------------- text data


def test_text_files_are_tokenized_with_the_folder_tokenizer(tmp_path, bert_dir):
    (tmp_path / "t.txt").write_text("\n".join(sentences(10, 0)) + "\n")
    rows = [{"sentence": s, "gold": "pos" if i % 2 else "neg"} for i, s in enumerate(sentences(6, 1))]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = model_cfg(
        "model: {tokenizer: {max_length: 8}}\n"
        "data:\n  train: {source: t.txt}\n  eval: {source: d.jsonl, text_field: sentence, label_field: gold}\n"
    )
    handle = load_model(str(bert_dir), model_cfg=cfg.model)
    ctx = RunContext(config=cfg, work_dir=tmp_path / "w", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
    train = ctx.data("train")
    assert len(train) == 10 and train.labels is None
    assert set(train.inputs) == {"input_ids", "attention_mask"}
    ids = train.inputs["input_ids"]
    assert ids.dtype == np.int64 and ids.shape[1] <= 8  # truncated to max_length
    assert (ids[:, 0] == 2).all()  # [CLS] from the folder's tokenizer
    ev = ctx.data("eval")
    assert ev.labels.tolist() == [0, 1, 0, 1, 0, 1]  # class names sorted (the folder has no label2id)
    cfg2 = model_cfg("model: {tokenizer: {max_length: 12, padding: max_length}}\ndata: {train: {source: t.txt}}\n")
    ctx2 = RunContext(config=cfg2, work_dir=tmp_path / "w2", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
    assert ctx2.data("train").inputs["input_ids"].shape == (10, 12)
    cfg3 = model_cfg("model: {tokenizer: {max_length: 4, truncation: false}}\ndata: {train: {source: t.txt}}\n")
    ctx3 = RunContext(config=cfg3, work_dir=tmp_path / "w3", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
    with pytest.raises(DataError, match="more than max_length 4"):
        ctx3.data("train")


def test_text_spans_add_word_spans_of_unlabeled_lines(tmp_path, bert_dir):
    from optimize.frameworks.text_variants import word_spans

    lines = [" ".join(f"w{i}_{k}" for k in range(n)) for i, n in enumerate((3, 6, 9, 12))]
    spans = word_spans(lines, 2)
    assert len(spans) == 6  # the 3-word line gives none; three lines × two rounds
    for sp in spans:
        words = sp.split()
        line = next(ln.split() for ln in lines if ln.split()[0].split("_")[0] == words[0].split("_")[0])
        assert 4 <= len(words) < len(line) and " ".join(words) in " ".join(line)  # contiguous, shorter
    assert word_spans(lines, 2) == spans  # fixed seed
    (tmp_path / "t.txt").write_text("\n".join(sentences(10, 0)) + "\n")
    handle = load_model(str(bert_dir))
    for extra, n in (("", 10), (", text_spans: 1", 10 + len(word_spans(sentences(10, 0), 1))),
                     (", text_spans: 1, samples: 4", 4 + len(word_spans(sentences(4, 0), 1)))):
        cfg = model_cfg(f"data: {{train: {{source: t.txt{extra}}}}}\n")
        ctx = RunContext(config=cfg, work_dir=tmp_path / "w", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
        assert len(ctx.data("train")) == n, extra
    rows = [{"text": s, "label": i % 2} for i, s in enumerate(sentences(6, 1))]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for src, why in (("d.jsonl", "unlabeled text"), ("t.txt, split: train", "split: all")):
        cfg = model_cfg(f"data: {{train: {{source: {src}, text_spans: 1}}}}\n")
        ctx = RunContext(config=cfg, work_dir=tmp_path / "w", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
        with pytest.raises(DataError, match=why):
            ctx.data("train")


def test_text_variants_add_rounds_of_new_inputs_marked_by_round(tmp_path, bert_dir):
    from optimize.frameworks.text_variants import word_spans, word_variants

    lines = [" ".join(f"w{i}_{k}" for k in range(n)) for i, n in enumerate((2, 3, 6, 12))]
    variants, rounds = word_variants(lines, 3)
    assert len(variants) == 9 and rounds.tolist() == [0] * 3 + [1] * 3 + [2] * 3  # the 2-word line gives none
    for v, line in zip(variants, lines[1:] * 3, strict=True):
        words, full = v.split(), line.split()
        assert 2 <= len(words) < len(full) and all(w in full for w in words)  # a part of its own line
    assert len(set(variants)) > 3 and word_variants(lines, 3)[0] == variants  # new each round; fixed seed
    (tmp_path / "t.txt").write_text("\n".join(sentences(10, 0)) + "\n")
    handle = load_model(str(bert_dir))
    cfg = model_cfg("data: {train: {source: t.txt, text_variants: 2, text_spans: 1}}\n")
    ctx = RunContext(config=cfg, work_dir=tmp_path / "w", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
    train = ctx.data("train")
    n_spans = len(word_spans(sentences(10, 0), 1))
    n_var = len(word_variants(sentences(10, 0), 2)[0])
    assert len(train) == 10 + n_spans + n_var and train.rounds.tolist() == [-1] * (10 + n_spans) + word_variants(
        sentences(10, 0), 2)[1].tolist()
    cfg = model_cfg("data: {train: {source: t.txt, split: train, text_variants: 1}}\n")
    ctx = RunContext(config=cfg, work_dir=tmp_path / "w2", input_model=handle, inputs=handle.inputs, base_dir=tmp_path)
    with pytest.raises(DataError, match="text_variants needs split: all"):
        ctx.data("train")


# ---------------------------------------------------------------------------- whole blocks removed


def test_drop_layers_chooses_the_blocks_that_move_the_outputs_least(tmp_path, monkeypatch):
    import itertools

    from optimize.data import Dataset
    from passes.prune import blocks as B
    from passes.prune.util import torch_outputs

    handle = load_model(str(save_folder(tmp_path / "b4", num_hidden_layers=4)))
    module, names = handle.module, [s.name for s in handle.inputs]
    where = B.block_list(module)
    assert where is not None and where[1] == "layer" and len(where[2]) == 4
    enc = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "b4"))(sentences(24, 0), padding=True, return_tensors="np")
    ds = Dataset({k: np.asarray(enc[k], dtype=np.int64) for k in names})
    ref = torch_outputs(module, ds, names)[0]
    cut = B.block_cut(module, where)
    scores = {c: B._score(module, cut, c, ds, names, ref) for c in itertools.combinations(range(4), 2)}
    assert len(set(scores.values())) > 1 and max(scores.values()) < 1.0
    gone, how = B.choose(module, cut, 2, ds, names)
    assert gone == max(scores, key=lambda c: scores[c]) and how["selection"] == "every combination (6)"
    assert len(module.model.encoder.layer) == 4  # every candidate put back
    monkeypatch.setattr(B, "MAX_COMBINATIONS", 1)
    greedy, how = B.choose(module, cut, 2, ds, names)
    first = max(range(4), key=lambda i: B._score(module, cut, (i,), ds, names, ref))
    assert how["selection"].startswith("greedy") and first in greedy and len(set(greedy)) == 2
    B.drop(module, where, gone)
    assert len(module.model.encoder.layer) == 2 and module.model.config.num_hidden_layers == 2
    kept = [i for i in range(4) if i not in gone]
    assert all(a is where[2][i] for a, i in zip(module.model.encoder.layer, kept, strict=True))


def four_block_bert(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A 4-block BERT folder, training text in the working folder, and the configs' shared head."""
    folder = save_folder(tmp_path / "b4", num_hidden_layers=4)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("\n".join(sentences(32, 0)) + "\n")
    return folder, ("schema_version: 1\ndata: {train: {source: train.txt}}\nmodel: {tokenizer: {max_length: 16}}\n"
                    "output: {exporter: torchscript}\nmeasure: {repeat: 3, warmup: 1, single_thread: false}\n")


def prune_run(folder: Path, base: str, fields: str, name: str = "p.yaml"):
    """The report of a run of one structured prune pass with `fields`, and its prune step."""
    from optimize import pipeline
    from optimize.api import RunOptions

    Path(name).write_text(base + "passes:\n  - {type: prune, method: structured, " + fields + "}\n")
    report = pipeline.run(RunOptions(model=str(folder), config=name, threads=1))
    return report, next(s for s in report.steps if s.type == "prune")


@pytest.mark.slow  # ~5 s: prune, export, measure
def test_drop_layers_through_the_pipeline_then_heads_and_ffn(tmp_path, monkeypatch):
    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.report_md import to_markdown

    folder, base = four_block_bert(tmp_path, monkeypatch)
    report, step = prune_run(folder, base, "drop_layers: 2, sparsity: 0.0")
    dropped = step.metrics["drop_layers"]
    assert f"blocks removed {dropped['removed']} of 4" in to_markdown(report)
    assert dropped["blocks_before"] == 4 and dropped["blocks_after"] == 2 and len(dropped["removed"]) == 2
    assert sorted(dropped["kept"] + dropped["removed"]) == [0, 1, 2, 3]
    assert 0 < dropped["quality_after_drop"]["mean_cosine"] < 1 and dropped["quality_after_drop"]["on"]
    assert step.metrics["macs_reduction"] > 1.5 and step.params_after < step.params_before
    (tmp_path / "q.yaml").write_text(base + "passes:\n  - {type: prune, method: structured, drop_layers: [0], sparsity: 0.5}\n")
    step = next(s for s in pipeline.run(RunOptions(model=str(folder), config="q.yaml", threads=1)).steps if s.type == "prune")
    assert step.metrics["drop_layers"]["removed"] == [0] and step.metrics["drop_layers"]["selection"] == "given"
    ffn = [e for e in step.metrics["layers"] if e["name"].endswith("intermediate.dense")]
    assert len(ffn) == 3 and all(e["shape_after"][0] == 32 for e in ffn)
    before = sum(p.numel() for p in load_model(str(folder)).module.parameters())
    assert step.metrics["params_before"] == before  # counted before the block went
    assert step.metrics["per_step"][-1]["params_removed"] == step.metrics["params_removed"]  # the same base
    (tmp_path / "a.yaml").write_text(  # blocks out, then the FFN ratio searched on the blocks left
        base.replace("data: {train: {source: train.txt}}", "data: {train: {source: train.txt}, eval: {source: train.txt}}")
        + "passes:\n  - {type: prune, method: structured, drop_layers: [1], sparsity: auto, search_grid: [0.25, 0.5],"
        " search_samples: 16, search_min_cosine: -1.0}\n")
    step = next(s for s in pipeline.run(RunOptions(model=str(folder), config="a.yaml", threads=1)).steps if s.type == "prune")
    assert step.metrics["drop_layers"]["removed"] == [1] and step.metrics["search"]["chosen"]["sparsity"] == 0.5
    assert step.metrics["params_before"] == before and step.metrics["params_removed"] > 0.25
    (tmp_path / "r.yaml").write_text(base + "passes:\n  - {type: prune, method: structured, drop_layers: [4], sparsity: 0.0}\n")
    with pytest.raises(ConfigError, match="the model has 4 blocks"):
        pipeline.run(RunOptions(model=str(folder), config="r.yaml", threads=1))
    with pytest.raises(ConfigError, match="drop_layers applies to method: structured"):
        load_config_text("schema_version: 1\npasses: [{type: prune, drop_layers: 1}]\n")


# ---------------------------------------------------------------------------- attention sublayers removed


def test_drop_attention_on_a_bert_leaves_each_block_its_ffn(tmp_path):
    from passes.prune import blocks as B
    from passes.prune.sublayers import NoAttention, attention_cut

    handle = load_model(str(save_folder(tmp_path / "b3", num_hidden_layers=3)))
    module = handle.module.eval()
    layers = B.block_list(module)[2]
    enc = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "b3"))(sentences(4, 0), padding=True, return_tensors="pt")
    args = tuple(enc[s.name] for s in handle.inputs)
    before = module(*args)
    cut = attention_cut(module, layers, args)
    undo = cut.remove((1,))
    seen = {}
    layers[1].register_forward_hook(lambda _m, a, out: seen.update(x=a[0], y=out))
    with torch.no_grad():
        changed = module(*args)
        x = seen["x"]  # block 1 without its attention: the FFN and its LayerNorm on the block's input
        assert torch.allclose(seen["y"], layers[1].output(layers[1].intermediate(x), x), atol=1e-6)
    assert isinstance(layers[1].attention, NoAttention) and not torch.allclose(changed, before)
    undo()
    with torch.no_grad():
        assert torch.allclose(module(*args), before)


@pytest.mark.slow  # ~5 s: prune, export, measure
def test_drop_attention_through_the_pipeline_after_drop_layers(tmp_path, monkeypatch):
    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.report_md import to_markdown

    folder, base = four_block_bert(tmp_path, monkeypatch)
    report, step = prune_run(folder, base, "drop_attention: 2, sparsity: 0.0")
    cut = step.metrics["drop_attention"]
    assert cut["attention_sublayers_before"] == 4 and cut["attention_sublayers_after"] == 2
    assert cut["selection"] == "every combination (6)" and cut["best_candidates"][0]["removed"] == cut["removed"]
    assert f"attention sublayers removed {cut['removed']} of 4" in to_markdown(report)
    assert step.metrics["macs_reduction"] > 1.0 and step.params_after < step.params_before
    assert report.status == "ok" and report.output.path  # exported and verified without the sublayers
    (tmp_path / "q.yaml").write_text(  # two blocks out, then the attention of the first block left, then FFN
        base + "passes:\n  - {type: prune, method: structured, drop_layers: [1, 2], drop_attention: [1], sparsity: 0.5}\n")
    step = next(s for s in pipeline.run(RunOptions(model=str(folder), config="q.yaml", threads=1)).steps if s.type == "prune")
    assert step.metrics["drop_layers"]["kept"] == [0, 3] and step.metrics["drop_attention"]["removed"] == [1]
    assert step.metrics["drop_attention"]["removed_original"] == [3]  # block 1 of those left: the input's block 3
    assert step.metrics["params_before"] == sum(p.numel() for p in load_model(str(folder)).module.parameters())
    ffn = [e for e in step.metrics["layers"] if e["name"].endswith("intermediate.dense")]
    assert len(ffn) == 2 and all(e["shape_after"][0] == 32 for e in ffn)
    (tmp_path / "r.yaml").write_text(base + "passes:\n  - {type: prune, method: structured, drop_attention: [4]}\n")
    with pytest.raises(ConfigError, match="the model has 4 attention sublayers"):
        pipeline.run(RunOptions(model=str(folder), config="r.yaml", threads=1))


@pytest.mark.slow  # ~10 s: prune, export and verify twice
def test_a_mean_stand_in_through_the_pipeline_is_fitted_and_exported(tmp_path, monkeypatch):
    from optimize.report_md import to_markdown
    from passes.prune.stand_in import MeanStandIn

    folder, base = four_block_bert(tmp_path, monkeypatch)
    _, plain = prune_run(folder, base, "drop_layers: [0], drop_attention: [1, 2], sparsity: 0.0")
    report, step = prune_run(folder, base, "drop_layers: [0], drop_attention: [1, 2], attention_stand_in: mean, "
                             "sparsity: 0.5")
    stand = step.metrics["attention_stand_in"]
    assert stand["blocks"] == [2, 3] and stand["samples"] == 32 and len(stand["fit_r2"]) == 2
    assert all(0 < r <= 1 for r in stand["fit_r2"]) and stand["tokens"] > 32
    assert "a mean stand-in for the attention of blocks [2, 3] of the input model" in to_markdown(report)
    assert report.status == "ok"  # exported and verified against the torch model
    import onnxruntime as ort

    sess = ort.InferenceSession(report.output.path, providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    short, long_ = "a short line", "a much longer line of text that pads the short one"
    names = [i.name for i in sess.get_inputs()]

    def first(lines):
        enc = tok(lines, padding=True, return_tensors="np")
        return sess.run(None, {n: enc[n].astype(np.int64) for n in names})[0][0]

    one, two = first([short]), first([short, long_])
    assert np.allclose(two[: len(one)], one, atol=1e-4)  # the stand-in's mean skips the padding
    _, alone = prune_run(folder, base, "drop_layers: [0], drop_attention: [1, 2], attention_stand_in: mean, "
                         "sparsity: 0.0", "s.yaml")
    after = alone.metrics["attention_stand_in"]["quality_after"]["mean_cosine"]
    assert after > plain.metrics["drop_attention"]["quality_after_drop"]["mean_cosine"]  # closer than nothing
    handle = load_model(str(folder))
    assert not any(isinstance(m, MeanStandIn) for m in handle.module.modules())  # the input model untouched


@pytest.mark.slow  # ~5 s: prune, export, measure
def test_qk_rank_through_the_pipeline_exports_narrower_queries_and_keys(tmp_path, monkeypatch):
    import onnx

    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.report_md import to_markdown

    folder, base = four_block_bert(tmp_path, monkeypatch)
    report, step = prune_run(folder, base, "drop_attention: [1], qk_rank: 3, sparsity: 0.5")
    low = step.metrics["qk_rank"]
    assert (low["rank"], low["head_dims"], low["attention_modules"], low["samples"]) == (3, [8], 3, 32)
    assert 0 < low["quality_after"]["mean_cosine"] <= 1 and low["tokens"] == "attention_mask 1"
    assert "queries and keys at rank 3 of [8] dims per head in 3 attention modules" in to_markdown(report)
    assert report.status == "ok"  # exported and verified against the pruned torch model
    shapes = [tuple(i.dims) for i in onnx.load(report.output.path).graph.initializer if len(i.dims) == 2]
    assert shapes.count((32, 12)) == 6  # query and key of the three attention modules left: 4 heads x 3
    (tmp_path / "r.yaml").write_text(base + "passes:\n  - {type: prune, method: structured, qk_rank: 8}\n")
    with pytest.raises(ConfigError, match="qk_rank 8: attention model.encoder.layer.0.attention.self has 8 dims per head"):
        pipeline.run(RunOptions(model=str(folder), config="r.yaml", threads=1))


# ---------------------------------------------------------------------------- end to end


PIPELINE = """\
schema_version: 1
name: hf-embedder
seed: 0
data:
  train: {source: train.txt}
  eval: {source: eval.jsonl}
  batch_size: 16
model:
  tokenizer: {max_length: 24}
passes:
  - type: prune
    method: structured
    sparsity: 0.5
    head_sparsity: 0.5
  - type: distill
    epochs: 2
    lr: 0.001
    output_loss: cosine
  - type: quantize
    mode: dynamic
output:
  exporter: torchscript
measure: {repeat: 5, warmup: 1, single_thread: false}
gates:
  min_embedding_cosine: 0.5
"""


@pytest.mark.slow  # ~10 s: two exports, distillation, measurement
def test_folder_end_to_end_prune_distill_int8_with_tokenizer(tmp_path, bert_dir, monkeypatch):
    import onnx
    import onnxruntime as ort

    from optimize import pipeline
    from optimize.api import RunOptions

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("\n".join(sentences(64, 0)) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in sentences(16, 1)) + "\n")
    (tmp_path / "p.yaml").write_text(PIPELINE)
    report = pipeline.run(RunOptions(model=str(bert_dir), config="p.yaml", threads=2))

    out = tmp_path / "bert.opt"  # default output for a folder: a folder that serves as is
    assert Path(report.files["model"]) == out / "model.onnx"
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert report.config["model"]["task"] == "embedding"
    prune = next(s for s in report.steps if s.type == "prune")
    heads = prune.metrics["attention_heads"]
    assert [h["heads_after"] for h in heads] == [2, 2]  # half of the 4 heads of each layer removed
    ffn = {e["name"]: e for e in prune.metrics["layers"]}
    assert ffn["model.encoder.layer.0.intermediate.dense"]["shape_after"][0] == 32  # 64 → 32 FFN neurons
    assert any(s.type == "distill" for s in report.steps)
    assert report.metrics["quantization_ratio"].value == pytest.approx(0.25)
    acc = report.metrics["accuracy"]
    assert acc.inputs["metric"] == "embedding_cosine" and acc.inputs["samples"] == 16
    assert 0.5 < acc.inputs["min"] <= acc.inputs["mean"] <= 1.0 + 1e-6
    gate = next(g for g in report.gates if g.name == "min_embedding_cosine")
    assert gate.passed and gate.value == pytest.approx(acc.inputs["min"])

    # serve it as is: the written tokenizer feeds the ONNX file; symbolic batch and sequence
    model = onnx.load(str(out / "model.onnx"))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert all(isinstance(d[0], str) and isinstance(d[1], str) for d in dims)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    enc = tok(["the cat sat on the mat", "a bird sings"], padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    emb = sess.run(None, feed)[0]
    assert emb.shape == (2, 32) and np.isfinite(emb).all()


def test_embedding_gate_fails_with_exit_3_semantics(tmp_path, bert_dir, monkeypatch):
    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.errors import GateFailed

    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval.txt").write_text("\n".join(sentences(8, 2)) + "\n")
    (tmp_path / "p.yaml").write_text(
        "schema_version: 1\ndata: {eval: {source: eval.txt}}\npasses:\n  - type: quantize\n    mode: dynamic\n"
        "output: {exporter: torchscript}\nmeasure: {repeat: 3, warmup: 1, single_thread: false}\n"
        "gates: {min_embedding_cosine: 1.0}\n"
    )
    with pytest.raises(GateFailed, match="min_embedding_cosine"):
        pipeline.run(RunOptions(model=str(bert_dir), config="p.yaml", output=str(tmp_path / "o" / "m.onnx")))
    assert (tmp_path / "o" / "m.rejected.onnx").is_file() and not (tmp_path / "o" / "m.onnx").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_folder_blocks_out_fisher_distill_on_cuda(tmp_path, monkeypatch):
    """configs/hf-embedder.yaml's recipe on CUDA (+ the least-squares refit): block choice, Fisher scores, refit and distillation there."""
    from optimize import pipeline
    from optimize.api import RunOptions

    folder = save_folder(tmp_path / "b4", num_hidden_layers=4)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("\n".join(sentences(64, 0)) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in sentences(16, 1)) + "\n")
    (tmp_path / "p.yaml").write_text(
        PIPELINE.replace("    sparsity: 0.5\n    head_sparsity: 0.5\n",
                         "    importance: fisher\n    drop_layers: 1\n    sparsity: 0.25\n    head_sparsity: 0.0\n    refit: true\n")
        .replace("train: {source: train.txt}", "train: {source: train.txt, text_variants: 2}")
    )
    report = pipeline.run(RunOptions(model=str(folder), config="p.yaml", threads=2, device="cuda"))
    prune = next(s for s in report.steps if s.type == "prune").metrics
    assert len(prune["drop_layers"]["removed"]) == 1 and prune["importance"].startswith("fisher")
    assert prune["device"].startswith("cuda") and prune["per_step"][-1]["refit"], prune["per_step"]
    distill = next(s for s in report.steps if s.type == "distill").metrics
    assert distill["device"].startswith("cuda") and distill["samples_per_s"] > 0
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # else the output latency is CUDA's itself
        assert report.metrics["gpu_speedup"].value is not None
    assert report.metrics["accuracy"].inputs["min"] > 0.5
