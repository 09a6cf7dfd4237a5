"""export: torch → ONNX (dynamic batch axis), with the exporter and opset recorded."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optimize.pass_api import Pass, PassConfig


class ExportConfig(PassConfig):
    type: Literal["export"] = Field("export", description="Pass name: export")
    opset: int | None = Field(None, ge=13, le=23, description="ONNX opset (default: output.opset).")
    exporter: Literal["auto", "dynamo", "torchscript"] | None = Field(
        None, description="torch.onnx exporter (default: output.exporter)."
    )


class ExportPass(Pass):
    name = "export"
    summary = "torch → ONNX with a dynamic batch axis; exporter and opset recorded"
    config_cls = ExportConfig
    accepts = frozenset({"torch"})
    produces_onnx = True

    def run(self, model, ctx):  # type: ignore[no-untyped-def]
        from optimize.errors import PassError
        from optimize.export import ExportError, export_to_onnx
        from optimize.pass_api import PassResult

        out = ctx.config.output
        path = ctx.step_dir(self.name) / "model.onnx"
        try:
            handle = export_to_onnx(
                model, path, opset=self.config.opset or out.opset, exporter=self.config.exporter or out.exporter
            )
        except ExportError as exc:
            raise PassError(self.name, str(exc)) from None
        return PassResult(handle, {"exporter": handle.exporter, "opset": handle.opset})
