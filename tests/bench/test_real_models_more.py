"""The feature extraction the harness's extra real models are judged on (bench/real_models_more.py)."""

import numpy as np

from bench.real_models_more import _magika_features, _yolox_feed


def test_magika_features_strip_whitespace_and_pad_short_files():
    f = _magika_features(b"  \n hello world \t\n")
    assert f.shape == (2048,) and f.dtype == np.int32
    assert bytes(f[:11].tolist()) == b"hello world" and (f[11:1024] == 256).all()
    assert (f[1024:2048 - 11] == 256).all() and bytes(f[-11:].tolist()) == b"hello world"


def test_magika_features_of_a_long_file_take_its_first_and_last_kib():
    data = b" " * 10 + bytes(range(256)) * 40 + b"\n\n"
    f = _magika_features(data)
    assert f[0] == 0 and f[1023] == 1023 % 256  # leading spaces stripped, then the first 1024 bytes
    assert f[-1] == 255 and (f != 256).all()  # trailing newlines stripped, no padding needed


def test_yolox_feed_scales_into_the_top_left_and_keeps_0_255():
    img = np.full((100, 200, 3), 7, np.uint8)
    x = _yolox_feed(img)["images"]
    assert x.shape == (1, 3, 416, 416) and x.dtype == np.float32
    assert x[0, :, 0, 0].tolist() == [7, 7, 7] and x[0, :, 415, 415].tolist() == [114, 114, 114]
    assert x[0, 0, 207, 0] == 7 and x[0, 0, 209, 0] == 114  # 100 * 416/200 = 208 rows of image
