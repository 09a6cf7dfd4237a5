"""The small commands: help, version, passes, schema, validate, usage errors."""

from __future__ import annotations

import json

import pytest

from cli.app import app, main
from optimize import registry

pytest_plugins = ["cli_fixtures"]  # fixtures: runner, good_yaml, bad_yaml, fake_pipeline

EXPECTED_PASSES = ["prune", "quantize", "distill", "export", "graph", "fp16"]


def test_help_lists_every_command(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("run", "validate", "passes", "schema", "inspect", "bench"):
        assert cmd in r.stdout
    assert "Exit codes" in r.stdout


@pytest.mark.parametrize("cmd", ["run", "validate", "passes", "schema", "inspect", "bench"])
def test_each_command_has_help(runner, cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0, r.stderr
    assert "Usage" in r.stdout


def test_version(runner):
    from optimize import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"optimize {__version__}"


def test_passes_lists_registered_passes(runner):
    r = runner.invoke(app, ["passes"])
    assert r.exit_code == 0, r.stderr
    for name in EXPECTED_PASSES:
        assert name in r.stdout
    assert r.stderr == ""


def test_passes_json_matches_registry(runner):
    r = runner.invoke(app, ["passes", "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == registry.names()
    for row in rows:
        assert set(row["accepts"]) <= {"torch", "onnx"} and row["accepts"]


def test_passes_quantize_json_lists_options(runner):
    r = runner.invoke(app, ["passes", "quantize", "--json"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["name"] == "quantize"
    options = {o["name"]: o for o in info["options"]}
    assert "bits" in options
    assert options["bits"]["default"] == 8
    assert "type" not in options  # the YAML discriminator is not an option
    assert all(o["description"] for o in info["options"])


@pytest.mark.parametrize("name", EXPECTED_PASSES)
def test_every_pass_detail_renders(runner, name):
    r = runner.invoke(app, ["passes", name])
    assert r.exit_code == 0, r.stderr
    assert name in r.stdout


def test_passes_unknown_name(runner):
    r = runner.invoke(app, ["passes", "quantise"])
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown pass 'quantise'")
    assert "did you mean 'quantize'" in lines[0]


def test_schema_is_json_with_passes(runner):
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert "passes" in schema["properties"]


def test_report_schema(runner):
    r = runner.invoke(app, ["schema", "--report"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert {"metrics", "gates", "status"} <= set(schema["properties"])


def test_validate_good(runner, good_yaml):
    r = runner.invoke(app, ["validate", str(good_yaml)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"ok: {good_yaml} (2 passes: prune → quantize)"


def test_validate_bad_is_one_line_with_file_line_and_key(runner, bad_yaml):
    r = runner.invoke(app, ["validate", str(bad_yaml)])
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {bad_yaml}:4: passes[0].quantize.bits:")
    assert "Traceback" not in r.stderr


def test_validate_verbose_shows_traceback(runner, bad_yaml):
    r = runner.invoke(app, ["validate", str(bad_yaml), "-v"])
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad_yaml}:4:")


def test_validate_several_files(runner, good_yaml, bad_yaml, tmp_path):
    missing = tmp_path / "missing.yaml"
    r = runner.invoke(app, ["validate", str(good_yaml), str(bad_yaml), str(missing)])
    assert r.exit_code == 2
    assert r.stdout.startswith(f"ok: {good_yaml}")
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2
    assert str(missing) in errors[1]


def test_validate_with_override(runner, good_yaml):
    r = runner.invoke(app, ["validate", str(good_yaml), "--set", "passes[0].sparsity=2"])
    assert r.exit_code == 2
    assert "passes[0].prune.sparsity" in r.stderr


def test_unknown_flag_is_usage_error(runner):
    r = runner.invoke(app, ["run", "--no-such-flag"])
    assert r.exit_code == 2
    assert r.stdout == ""


def test_bad_choice_is_usage_error(runner):
    r = runner.invoke(app, ["run", "--device", "tpu"])
    assert r.exit_code == 2


def test_quiet_and_verbose_conflict(runner):
    r = runner.invoke(app, ["run", "-q", "-v", "--dry-run"])
    assert r.exit_code == 2
    assert "error:" in r.stderr


def test_main_exit_codes():
    for argv, code in ((["passes"], 0), (["passes", "nope"], 2), (["run", "--bogus"], 2), (["--version"], 0)):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert (info.value.code or 0) == code, argv
