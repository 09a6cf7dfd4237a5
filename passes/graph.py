"""graph: ONNX Runtime graph optimizations applied offline and saved (portable level only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optimize.pass_api import Pass, PassConfig


class GraphConfig(PassConfig):
    type: Literal["graph"] = Field("graph", description="Pass name: graph")
    level: Literal["basic"] = Field(
        "basic",
        description="ONNX Runtime optimization level saved to the file; only 'basic' is portable across hardware.",
    )


class GraphPass(Pass):
    name = "graph"
    summary = "ONNX Runtime graph optimizations (constant folding, redundant-node removal) saved offline"
    config_cls = GraphConfig
    accepts = frozenset({"onnx"})
    cacheable = True

    def run(self, model, ctx):  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        from optimize.inspect_onnx import op_counts
        from optimize.pass_api import PassResult

        out = ctx.step_dir(self.name) / "model.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(model.onnx_path), so, providers=["CPUExecutionProvider"])
        before, after = op_counts(model.onnx_path), op_counts(out)
        metrics = {"level": self.config.level, "nodes_before": sum(before.values()), "nodes_after": sum(after.values())}
        grown = _grown(model.onnx_path, out)
        if grown:
            # ONNX Runtime copies a weight that several If/Loop bodies share into each of them
            return PassResult(model, {**metrics, "kept_input": True}, [
                f"ONNX Runtime's optimizer grew the model from {grown[0] / 1e6:.2f} to {grown[1] / 1e6:.2f} MB "
                "(weights shared by subgraphs copied into each): the input is handed back unchanged"])
        return PassResult(model.replace(onnx_path=out), metrics)


def _grown(src, out) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    """(input bytes, output bytes) when the optimized file is larger by more than 5% and 64 KiB (a
    weight copied, not a few bytes of graph), else None."""
    from optimize.onnx_io import total_bytes

    before, after = total_bytes(src), total_bytes(out)
    return (before, after) if after - before > max(0.05 * before, 65536) else None
