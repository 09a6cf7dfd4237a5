"""The streamed inputs the harness's openwakeword models are judged on (bench/real_models_audio.py),
cut as openwakeword 0.4.0 cuts them."""

import numpy as np

from bench.real_models_audio import CHUNK, CONTEXT, FRAMES, _calls, _mel_calls


def test_mel_calls_are_1760_samples_with_480_of_the_previous_call():
    audio = np.arange(CHUNK * 4 + CONTEXT, dtype=np.float64)
    calls = [c["input"] for c in _mel_calls(audio)]
    assert len(calls) == 4 and all(c.shape == (1, 1760) and c.dtype == np.float32 for c in calls)
    assert calls[0][0, 0] == 0 and calls[-1][0, -1] == audio[-1]
    assert (calls[1][0, :CONTEXT] == calls[0][0, -CONTEXT:]).all()  # context carried over
    assert calls[1][0, CONTEXT] == calls[0][0, -1] + 1  # then new samples


def test_classifier_calls_slide_16_embeddings_one_frame_at_a_time():
    frames = np.arange(20 * 96, dtype=np.float64).reshape(20, 96)
    calls = _calls(frames)
    assert len(calls) == 20 - FRAMES + 1 and calls[0].shape == (1, 16, 96) and calls[0].dtype == np.float32
    assert (calls[1][0, 0] == frames[1]).all() and (calls[-1][0, -1] == frames[-1]).all()
