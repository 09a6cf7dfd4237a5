"""Planning the chain of steps: each pass's form, the exports the pipeline inserts where a pass
needs ONNX (and at the end), the steps that complete work a pass deferred to after an export, and
each pass's own checks. It reads what passes declare (`form_for`, `defers`, `produces_onnx`), never
their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optimize.context import PlanContext
from optimize.errors import ConfigError

if TYPE_CHECKING:
    from optimize.config import PipelineConfig
    from optimize.handle import ModelHandle
    from optimize.pass_api import Pass


@dataclass
class PlannedStep:
    index: int | None  # position in `passes:`; None for steps the pipeline inserts
    type: str
    form_in: str
    form_out: str
    inserted: bool = False
    pass_obj: Pass | None = None  # None for a step that completes work deferred by an earlier pass
    why: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index, "type": self.type, "form_in": self.form_in, "form_out": self.form_out,
            "inserted": self.inserted, "why": self.why,
        }


def form_needs_inputs(steps: list[PlannedStep]) -> bool:
    """An export runs: it needs the model's declared inputs."""
    return any(s.pass_obj is not None and s.pass_obj.produces_onnx for s in steps)


def plan_steps(cfg: PipelineConfig, config_file: str | None, handle: ModelHandle | None, form: str,
               has_inputs: bool) -> list[PlannedStep]:
    """The steps in order, tracking the model's form: an export inserted where a pass needs ONNX
    (and at the end), after it the steps that complete deferred work; each pass's `check` runs here."""
    from optimize import registry

    objects = [registry.get(p.type)(p) for p in cfg.passes]
    exporter = next(cls for cls in registry.all_passes().values() if cls.produces_onnx)
    steps: list[PlannedStep] = []
    pending: list[str] = []

    def flush_pending() -> None:
        steps.extend(PlannedStep(None, name, "onnx", "onnx", inserted=True, why="materialize after export") for name in pending)
        pending.clear()

    def add_export(why: str) -> None:
        steps.append(PlannedStep(None, exporter.name, "torch", "onnx", inserted=True,
                                 pass_obj=exporter(exporter.config_cls()), why=why))
        flush_pending()

    for i, obj in enumerate(objects):
        want = obj.form_for(form, objects[i + 1 :])  # type: ignore[arg-type]
        if want != form:
            if want == "torch":
                raise ConfigError(
                    f"{obj.name} needs a torch model, but the model is ONNX at this point "
                    f"({'input is ONNX' if i == 0 or handle is not None and handle.form == 'onnx' else 'after an export'}); "
                    "there is no ONNX → torch converter for it",
                    file=config_file, key=f"passes[{i}].{obj.name}",
                )
            add_export(f"{obj.name} runs on ONNX")
        pc = PlanContext(
            config=cfg, input_form=handle.form if handle is not None else "torch", has_input_spec=has_inputs, index=i,
            form_at_pass=want, later=objects[i + 1 :], earlier=objects[:i], model=handle,
        )
        _check_pass(obj, pc, config_file)
        out_form = "onnx" if obj.produces_onnx else want
        steps.append(PlannedStep(i, obj.name, want, out_form, pass_obj=obj))
        if obj.produces_onnx:
            flush_pending()
        elif obj.defers(want):
            pending.append(obj.name)
        form = out_form
    if form == "torch":
        add_export("the output is ONNX")
    return steps


def _check_pass(obj: Pass, pc: PlanContext, config_file: str | None) -> None:
    """The pass's own planning checks; its ConfigError names the config file."""
    try:
        obj.check(pc)
    except ConfigError as exc:
        if exc.file is None:
            exc.file = config_file
            exc.args = (exc.render(),)
        raise
