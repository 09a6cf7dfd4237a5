"""optimize prune-scan: per-layer sensitivity, proposals, YAML, and the command's contract."""

from __future__ import annotations

import json

import numpy as np
import yaml
from tiny_models import ffn_model
from typer.testing import CliRunner

from cli.app import app
from optimize.config import load_config_text
from passes.prune.scan import scan


def test_scan_proposes_the_largest_ratio_within_target(tmp_path):
    dead = list(range(8))  # half of the 16 FFN neurons are dead: removing them changes nothing
    src, _ = ffn_model(tmp_path / "ffn.onnx", dead)
    result = scan(str(src), ratios=(0.25, 0.5, 0.75), min_cosine=0.99999)
    rows = {r["name"]: r for r in result["layers"]}
    assert set(rows) == {"fc1", "fc2"}
    fc1 = rows["fc1"]
    assert fc1["scores"]["0.25"] > 0.99999 and fc1["scores"]["0.5"] > 0.99999
    assert fc1["scores"]["0.75"] < 0.99999
    assert fc1["proposed"] == 0.5
    assert rows["fc2"]["proposed"] is None and "residual" in rows["fc2"]["reason"]
    assert result["layer_sparsity"] == {"fc1": 0.5}
    assert "cosine" in result["metric"]
    # the YAML snippet is a valid pipeline
    cfg = load_config_text("schema_version: 1\n" + result["yaml"])
    assert cfg.passes[0].layer_sparsity == {"fc1": 0.5}
    json.dumps(result)


def test_cli_prune_scan_json_and_usage_errors(tmp_path):
    src, _ = ffn_model(tmp_path / "ffn.onnx", list(range(8)))
    runner = CliRunner()
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5", "--json", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["layer_sparsity"] == {"fc1": 0.5}
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5,1.5"])
    assert res.exit_code == 2 and "--ratios" in res.output
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5", "-q"])
    assert res.exit_code == 0
    snippet = res.stdout.split("```yaml")[1].split("```")[0]
    assert yaml.safe_load(snippet)["passes"][0]["layer_sparsity"] == {"fc1": 0.5}
    assert not np.isnan(json.loads(runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.25", "--json"]).stdout)["baseline"])


def test_cli_prune_scan_refuses_a_layer_the_model_lacks_and_impossible_targets(tmp_path):
    src, _ = ffn_model(tmp_path / "ffn.onnx", list(range(8)))
    runner = CliRunner()
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5", "--layer", "nope", "-q"])
    assert res.exit_code == 2 and "no layer 'nope'" in res.output and "fc1" in res.output, res.output
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5", "--min-cosine", "2", "-q"])
    assert res.exit_code == 2 and "--min-cosine" in res.output, res.output
    res = runner.invoke(app, ["prune-scan", str(src), "--ratios", "0.5", "--layer", "fc1", "--json", "-q"])
    assert res.exit_code == 0 and [r["name"] for r in json.loads(res.stdout)["layers"]] == ["fc1"], res.output
