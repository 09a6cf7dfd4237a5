"""openwakeword's real ONNX files for bench/real_onnx.py (thirty-second session), judged on speech.

The openwakeword 0.4.0 wheel ships its models: the melspectrogram front end (a PyTorch export: the
STFT as two Conv layers whose windowed kernels are a quarter zeros, the mel filterbank a MatMul),
Google's speech-embedding model (a tf2onnx export: 20 convolutions on an NHWC input, LeakyReLU and
Max), and wake-word classifiers ("hey jarvis": a PyTorch MLP with decomposed LayerNorms).

Speech is synthesized by espeak-ng (Debian `espeak-ng`; no recorded speech ships in any installed
package), several voices and speeds, resampled to 16 kHz. It is real enough to tell a broken model
from a good one: the FP32 "hey jarvis" classifier scores 0.997-0.998 on espeak's "hey jarvis" and
at most 0.001 on the other phrases. Inputs are fed as openwakeword 0.4.0 feeds them (utils.py):
int16 sample values as float32, 1,760 samples a streamed call (1,280 new and 480 of context), the
spectrogram divided by 10 plus 2, windows of 76 frames every 8, 16 embeddings per classifier call.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from bench.real_models import (
    Case,
    Prepared,
    Views,
    declare_shapes,
    image_prepared,
    npz_declare,
    package_dir,
)

SR = 16000
CHUNK, CONTEXT = 1280, 480  # openwakeword's streamed call: new samples + context
WINDOW, STEP, FRAMES = 76, 8, 16  # embedding window (mel frames), its step, embeddings per classifier call
PHRASES = (
    "hey jarvis", "what's the weather like today", "turn on the kitchen lights", "hey jarvis, play some music",
    "set a timer for ten minutes", "good morning, how are you", "remind me to call my sister", "hey jarvis",
    "the quick brown fox jumps over the lazy dog", "what time is it in london", "hey jarvis, stop",
    "please open the front door", "I would like a cup of tea", "how far is the nearest station",
)
VOICES = (("en-us", 150), ("en-gb", 170), ("en-us+f3", 140), ("en-gb+m3", 160))


def _models() -> Path:
    return package_dir("openwakeword") / "resources" / "models"


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's speech for `text` at 16 kHz, as int16 sample values (float64)."""
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", f.name, text], check=True)
        with wave.open(f.name) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
            rate = w.getframerate()
    return resample_poly(audio, SR, rate) if rate != SR else audio


@functools.cache
def utterances() -> tuple[tuple[str, np.ndarray], ...]:
    """Every phrase in one voice each (cycling), a second of silence before, half a second after
    (openwakeword's own clip scoring pads the start by a second)."""
    return tuple((text, np.concatenate([np.zeros(SR), speak(text, *VOICES[i % len(VOICES)]), np.zeros(SR // 2)]))
                 for i, text in enumerate(PHRASES))


def _split(items: list) -> tuple[list, list]:
    """Eval from the even utterances, calibration from the odd (disjoint phrases and voices)."""
    return items[0::2], items[1::2]


def _mel_calls(audio: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"input": audio[end - CHUNK - CONTEXT:end].astype(np.float32)[None]}
            for end in range(CHUNK + CONTEXT, len(audio) + 1, CHUNK)]


def prepare_mel(cache: Path) -> Prepared:
    ev, cal = _split([_mel_calls(a) for _, a in utterances()])
    ev, cal = [c for u in ev for c in u][::3], [c for u in cal for c in u][::3]
    return image_prepared(_models() / "melspectrogram.onnx", cache,
                          "espeak-ng speech (14 phrases, 4 voices) at 16 kHz, openwakeword's streamed calls "
                          "(1,760 int16 samples as float32)", ev, cal)


@functools.cache
def _fp32_session(name: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(_models() / name), providers=["CPUExecutionProvider"])


def _windows(audio: np.ndarray) -> list[np.ndarray]:
    """The embedding model's inputs for one clip, as openwakeword's _get_embeddings makes them."""
    spec = np.squeeze(_fp32_session("melspectrogram.onnx").run(None, {"input": audio.astype(np.float32)[None]})[0])
    spec = spec / 10 + 2
    return [spec[i:i + WINDOW, :, None].astype(np.float32) for i in range(0, spec.shape[0] - WINDOW + 1, STEP)]


def prepare_embed(cache: Path) -> Prepared:
    ev, cal = _split([_windows(a) for _, a in utterances()])
    ev = [{"input_1": w[None]} for u in ev for w in u][::2]
    cal = [{"input_1": w[None]} for u in cal for w in u][::2]
    return image_prepared(_models() / "embedding_model.onnx", cache,
                          "espeak-ng speech (14 phrases, 4 voices): FP32 melspectrogram windows of 76 frames "
                          "(/10 + 2), openwakeword's preprocessing, batch 1", ev, cal)


def _frames(audio: np.ndarray) -> np.ndarray:
    emb = _fp32_session("embedding_model.onnx")
    return np.concatenate([emb.run(None, {"input_1": w[None]})[0].reshape(1, -1) for w in _windows(audio)])


def _calls(frames: np.ndarray) -> list[np.ndarray]:
    return [frames[i:i + FRAMES][None].astype(np.float32) for i in range(len(frames) - FRAMES + 1)]


def run_jarvis(sess, clip: list[np.ndarray]) -> Views:
    """The score track over one clip, as openwakeword scores a stream: one sample per clip."""
    name = sess.get_inputs()[0].name
    return {"score_track": np.array([[float(sess.run(None, {name: x})[0].ravel()[0]) for x in clip]])}


def prepare_jarvis(cache: Path) -> Prepared:
    path = _models() / "hey_jarvis_v0.1.onnx"
    clips = [(text, _calls(_frames(a))) for text, a in utterances()]
    ev = [c for text, c in clips if "jarvis" in text]  # tracks that rise to the wake word (others stay ~0)
    cal = [c for text, c in clips if "jarvis" not in text]
    first = {"x.1": ev[0][0]}
    return Prepared(path=path, shape="1x16x96 (fixed), score tracks of whole clips", eval=ev, calib=cal,
                    source="espeak-ng speech: the 4 clips saying \"hey jarvis\" judged by their score tracks "
                           "(FP32 peaks 0.99+); the 10 other phrases' embeddings calibrate",
                    run=run_jarvis, declare_args=declare_shapes(path, first),
                    declare_yaml=npz_declare(cache, [{"x.1": x} for c in ev for x in c],
                                             [{"x.1": x} for c in cal for x in c]))


CASES: list[Case] = [
    Case("oww-mel", "openwakeword melspectrogram (PyTorch export): STFT as Conv, a quarter of the weights "
         "zero, symbolic batch and samples", "openwakeword", prepare_mel),
    Case("oww-embed", "Google speech embedding (tf2onnx): 20 Conv on NHWC input, LeakyReLU, Max, symbolic "
         "batch", "openwakeword", prepare_embed),
    Case("oww-jarvis", "openwakeword \"hey jarvis\" classifier (PyTorch export): Gemm MLP, decomposed "
         "LayerNorm, fixed 1x16x96", "openwakeword", prepare_jarvis),
]

if __name__ == "__main__":  # smoke: prepare every case and run FP32 on it
    import sys

    import onnxruntime as ort

    for case in CASES:
        prep = case.prepare(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rma") / case.name)
        sess = ort.InferenceSession(str(prep.path), providers=["CPUExecutionProvider"])
        views = prep.run(sess, prep.eval[0])
        print(case.name, prep.shape, len(prep.eval), len(prep.calib), prep.declare_args,
              {k: (v.shape, float(np.abs(v).max())) for k, v in views.items()},
              [round(float(prep.run(sess, e)[next(iter(views))].max()), 3) for e in prep.eval[:6]])
