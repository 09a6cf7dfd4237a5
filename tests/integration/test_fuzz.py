"""Property-based tests (hypothesis) over pipeline files, `--set` overrides and model-file bytes:
any input gives a documented exit code (0/1/2/3) and, on failure, exactly one `error: ...` line;
never a traceback, never a hang (each example has a deadline).

Examples are bounded so the default suite stays fast; the full-run variant is marked slow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import FAST, cli, error_lines, make_mlp_onnx

FUZZ = settings(
    max_examples=30, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

KEYS = [
    "schema_version", "passes", "type", "sparsity", "method", "scope", "bits", "mode", "format", "per_channel",
    "epochs", "lr", "temperature", "alpha", "gates", "min_parity_cosine", "min_speedup", "hardware", "device",
    "threads", "seed", "data", "train", "eval", "model", "inputs", "name", "shape", "dtype", "output", "path",
    "measure", "repeat", "sparsty", "quantise", "", "0",
]
PASS_TYPES = ["prune", "quantize", "distill", "export", "graph", "fp16", "nope", "Prune"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e-4", "0.5", "cpu", "cuda", "auto", "dynamic", "static", "magnitude", "structured", "8", "", "~"]),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12,
)
PASS = st.fixed_dictionaries({"type": st.sampled_from(PASS_TYPES)}, optional={k: VALUES for k in KEYS[3:14]})
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "schema_version": st.one_of(st.just(1), SCALARS),
        "passes": st.one_of(st.lists(PASS, max_size=3), VALUES),
        "gates": VALUES, "hardware": VALUES, "seed": SCALARS, "data": VALUES, "model": VALUES, "measure": VALUES,
    },
)


def check_contract(code: int, err: str, allowed: set[int]) -> None:
    assert code in allowed, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    if code != 0:
        lines = [ln for ln in error_lines(err) if ln.startswith("error:")]
        assert len(lines) == 1, err
        assert len(lines[0]) > len("error: "), err


@FUZZ
@given(doc=CONFIG)
def test_any_config_document_validates_or_is_one_line_exit_2(capfd, doc: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.yaml"
        p.write_text(yaml.safe_dump(doc, allow_unicode=True))
        code, _, err = cli(capfd, "validate", str(p))
    check_contract(code, err, {0, 2})


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abcdepst_:-[]{}!&*|>'\"#%@ \n\t01.,?")), max_size=200))
def test_any_yaml_text_validates_or_is_one_line_exit_2(capfd, text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.yaml"
        p.write_text(text)
        code, _, err = cli(capfd, "validate", str(p))
    check_contract(code, err, {0, 2})


@FUZZ
@given(key=st.text(alphabet=st.sampled_from(list("abcpst_.[]0159")), max_size=30), value=st.text(max_size=12))
def test_any_set_override_is_accepted_or_one_line_exit_2(capfd, tmp_path: Path, key: str, value: str) -> None:
    p = tmp_path / "good.yaml"
    p.write_text("schema_version: 1\npasses:\n  - type: prune\n")
    code, _, err = cli(capfd, "validate", str(p), "--set", f"{key}={value}")
    check_contract(code, err, {0, 2})


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mlp_onnx(tmp_path_factory.mktemp("fuzz") / "mlp.onnx").read_bytes()


def mutate(data: bytes, draw_ops: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for op, pos, val in draw_ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= val or 1
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes([val]) * (1 + val % 7)
        elif op == "delete":
            del b[i : i + 1 + val % 5]
    return bytes(b)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(ops=OPS)
def test_any_mutated_model_file_plans_or_is_one_line_exit_2(capfd, tmp_path: Path, model_bytes: bytes, ops) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    random_calibration: true\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(mutate(model_bytes, ops))
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "--dry-run", "-q", "-o", str(tmp_path / "out.onnx"))
    check_contract(code, err, {0, 2})
    assert not (tmp_path / "out.onnx").exists()


@FUZZ
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".onnx", ".pt", ".pt2", ".pth"]))
def test_any_bytes_as_a_model_file_are_one_line_exit_2(capfd, tmp_path: Path, data: bytes, suffix: str) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: graph\n")
    model = tmp_path / f"m{suffix}"
    model.write_bytes(data)
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "--dry-run", "-q", "-o", str(tmp_path / "out.onnx"))
    check_contract(code, err, {0, 2})


@pytest.mark.slow
@settings(max_examples=15, deadline=60000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_mutated_model_runs_to_a_documented_exit_code(capfd, tmp_path: Path, model_bytes: bytes, ops) -> None:
    """Full runs: a mutation that survives loading may change weights (any exit 0/1/3) but never
    crashes with a traceback or leaves a model under the final name on failure."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    random_calibration: true\n" + FAST)
    model = tmp_path / "m.onnx"
    model.write_bytes(mutate(model_bytes, ops))
    out = tmp_path / "out.onnx"
    out.unlink(missing_ok=True)
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-q", "-o", str(out))
    check_contract(code, err, {0, 1, 2, 3})
    assert out.exists() == (code == 0)
