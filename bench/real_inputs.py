"""Realistic inputs for bench/real_onnx.py, built only from what installed packages ship.

Nothing here is random token ids or 1x1 images: text is the first lines of docstrings of the
standard library (real English), images are scikit-learn's two sample photos (china.jpg,
flower.jpg), matplotlib's portrait of Grace Hopper, and pages/lines of that text rendered with Pillow's bundled font, audio is a
synthesized voiced speech-like signal (no installed package ships recorded speech: scipy's and
CPython's test .wav files are tones, noise and a plucked string).
"""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path

import numpy as np

_DOC_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "copy", "csv", "datetime", "decimal", "difflib", "email.utils", "fnmatch", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "html", "http.client", "imaplib", "inspect",
    "ipaddress", "itertools", "json", "logging", "mailbox", "mimetypes", "ntpath", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "shlex", "shutil",
    "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "wave", "zipfile",
)


def sentences(n: int) -> list[str]:
    """`n` distinct real English sentences: first docstring lines of stdlib callables."""
    out: list[str] = []
    seen: set[str] = set()
    for mod_name in _DOC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in sorted(vars(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or not callable(obj):
                continue
            line = (inspect.getdoc(obj) or "").strip().splitlines()
            text = line[0].strip() if line else ""
            if len(text.split()) < 6 or not text[0].isalpha() or text in seen:
                continue
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} docstring sentences found, {n} needed")


def split_even_odd(items: list) -> tuple[list, list]:
    """Disjoint eval (even positions) and calibration (odd) sets of the same distribution."""
    return items[0::2], items[1::2]


# ---------------------------------------------------------------- images


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's bundled photos (china.jpg, flower.jpg), HxWx3 uint8 RGB, 427x640."""
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def portrait() -> np.ndarray | None:
    """matplotlib's bundled photo of Grace Hopper (a real portrait, 600x512), when installed
    (matplotlib is one of the project's dev dependencies)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "mpl-data/sample_data/grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB")) if path.exists() else None


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_page(lines: list[str], height: int, width: int, photo: np.ndarray | None,
                seed: int) -> np.ndarray:
    """A document-like page: a title, paragraphs of real text, optionally a photo as a figure."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(page)
    y = int(height * 0.05)
    draw.text((int(width * 0.08), y), lines[0][:40], fill=(10, 10, 10), font=_font(width // 22))
    y += width // 12
    size = int(rng.integers(width // 48, width // 36))
    for i, line in enumerate(lines[1:]):
        if photo is not None and i == 3:
            y = _paste_figure(page, photo, y, width, height)
        if y > height - 2 * size:
            break
        draw.text((int(width * 0.08), y), line[:70], fill=(20, 20, 20), font=_font(size))
        y += int(size * 1.6)
    return np.asarray(page)


def _paste_figure(page, photo: np.ndarray, y: int, width: int, height: int) -> int:
    from PIL import Image

    w = int(width * 0.6)
    h = int(w * photo.shape[0] / photo.shape[1])
    if y + h > height * 0.8:
        return y
    page.paste(Image.fromarray(photo).resize((w, h)), (int(width * 0.2), y))
    return y + h + 12


def render_line(text: str, seed: int) -> np.ndarray:
    """One text line as a detector would crop it: tight box, varied size and contrast."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    size = int(rng.integers(22, 36))
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (right - left + 12, bottom - top + 10), bg)
    ImageDraw.Draw(img).text((6 - left, 5 - top), text, fill=fg, font=font)
    return np.asarray(img)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def normalize_chw(img: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 → 3xHxW float32, (x/255 - mean) / std."""
    x = (img.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics-style letterbox to size x size (grey 114 border), keeps the aspect ratio."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resize(img, nh, nw)
    return out


def photo_crops(photos: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """n crops (60-100% of each side) of the real photos, some mirrored."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        out.append(crop[:, ::-1] if i % 3 == 2 else crop)
    return out


# ---------------------------------------------------------------- audio

_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410),
           (300, 870, 2240), (660, 1720, 2410))


def speech_like(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A synthesized voiced speech-like signal: syllables (harmonic glottal source, f0 drifting
    in 95-210 Hz, filtered by three vowel formants, with attack/decay) separated by pauses of
    faint noise, some fricatives. float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr), np.float32)
    pos = int(rng.integers(0, sr // 5))
    while pos < len(out):
        dur = int(sr * rng.uniform(0.12, 0.32))
        seg = _fricative(dur, rng, sr) if rng.random() < 0.15 else _syllable(dur, rng, sr)
        end = min(pos + dur, len(out))
        out[pos:end] += seg[:end - pos]
        pos = end + int(sr * (rng.uniform(0.25, 0.6) if rng.random() < 0.3 else rng.uniform(0.0, 0.06)))
    out += rng.normal(0, 0.003, len(out)).astype(np.float32)
    return (0.6 * out / max(1e-6, float(np.abs(out).max()))).astype(np.float32)


def _syllable(n: int, rng, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    f0 = rng.uniform(95, 210) * np.linspace(1.0, rng.uniform(0.8, 1.2), n)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    src = sum(np.sin(k * phase) / k for k in range(1, 30)) + rng.normal(0, 0.05, n)
    sig = np.zeros(n)
    for f in _VOWELS[int(rng.integers(len(_VOWELS)))]:
        r = math.exp(-math.pi * 80 / sr)
        a = [1, -2 * r * math.cos(2 * math.pi * f / sr), r * r]
        sig += lfilter([1 - r], a, src)
    env = np.sin(np.linspace(0, np.pi, n)) ** 0.6
    return (sig * env * rng.uniform(0.4, 1.0)).astype(np.float32)


def _fricative(n: int, rng, sr: int) -> np.ndarray:
    from scipy.signal import butter, lfilter

    b, a = butter(4, 3000 / (sr / 2), btype="high")
    env = np.sin(np.linspace(0, np.pi, n))
    return (lfilter(b, a, rng.normal(0, 1, n)) * env * 0.3).astype(np.float32)
