"""fp16: convert float32 weights and compute to float16, keeping float32 inputs and outputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optimize.pass_api import Pass, PassConfig


class Fp16Config(PassConfig):
    type: Literal["fp16"] = Field("fp16", description="Pass name: fp16")
    keep_io_types: bool = Field(True, description="Keep float32 model inputs and outputs.")
    op_block_list: list[str] | None = Field(None, description="Op types kept in float32 (default: the converter's list).")


class Fp16Pass(Pass):
    name = "fp16"
    summary = "float32 → float16 weights and compute (ONNX Runtime's converter), float32 I/O kept"
    config_cls = Fp16Config
    accepts = frozenset({"onnx"})
    cacheable = True

    def run(self, model, ctx):  # type: ignore[no-untyped-def]
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from optimize import onnx_io
        from optimize.pass_api import PassResult

        proto = onnx_io.load(model.onnx_path)
        kwargs = {"keep_io_types": self.config.keep_io_types}
        if self.config.op_block_list is not None:
            kwargs["op_block_list"] = self.config.op_block_list
        converted = convert_float_to_float16(proto, **kwargs)
        # The converter appends the float32 I/O Casts at the end of the node list; the ONNX spec
        # (and the checker) require topological order, so re-sort with onnx-ir.
        import onnx_ir as ir

        graph_ir = ir.from_proto(converted)
        graph_ir.graph.sort()
        out = onnx_io.save(ir.to_proto(graph_ir), ctx.step_dir(self.name) / "model.onnx")
        return PassResult(model.replace(onnx_path=out), {"keep_io_types": self.config.keep_io_types})
