"""The pass contract: a name, a pydantic config, the model forms it accepts, and `run`.

It lives in the library so the engine (pipeline, cache, config schema) depends only on this
contract; the pass modules under `passes/` implement it and the engine finds them by name through
`optimize.registry`, never by importing them.

Pass modules import only light things at module level (pydantic, this file); torch, onnx and
onnxruntime are imported inside `run` so `optimize --help` stays instant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from optimize.strict_bool import check_bool_field

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.handle import Form, ModelHandle


class PassConfig(BaseModel):
    """Base of every pass's options. `type` is the pass name (the YAML discriminator): each pass's
    config narrows it to `Literal["NAME"] = "NAME"`, so `optimize.config.PipelineConfig` validates
    `passes:` as a union discriminated on it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # strict booleans on every option; not a "*" validator, which pydantic refuses on `type`
        # (the discriminator). Runs before pydantic collects the class's validators.
        super().__init_subclass__(**kwargs)
        names = [n for n in cls.__dict__.get("__annotations__", {}) if n != "type" and not n.startswith("_")]
        if names:
            cls._strict_bools = field_validator(*names, mode="before", check_fields=False)(check_bool_field)


@dataclass
class PassResult:
    model: ModelHandle
    # Measured facts about what the pass did (JSON-serialisable). Keys are pass-specific.
    metrics: dict[str, Any] = field(default_factory=dict)
    # Human-readable findings and warnings that belong in the report.
    notes: list[str] = field(default_factory=list)


class Pass(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    config_cls: ClassVar[type[PassConfig]]
    accepts: ClassVar[frozenset[str]]  # subset of {"torch", "onnx"}
    trains: ClassVar[bool] = False  # True for passes that train the torch model (distill)
    # removes or zeroes weights; its metrics may carry a per-layer table (`layers`) that the
    # report's sparsity chart and per-layer section draw from
    sparsifies: ClassVar[bool] = False
    # What the engine reads instead of comparing pass names:
    produces_onnx: ClassVar[bool] = False  # turns a torch model into ONNX; the planner inserts it where needed
    # on an ONNX input, the output is a function of the input, config, data, seed, device, threads
    # and versions, so the pass cache may keep it (optimize/cache.py)
    cacheable: ClassVar[bool] = False

    def cache_exclusion(self) -> str | None:
        """For a cacheable pass: why this config's result is not deterministic (None: it is)."""
        return None

    def cache_inputs(self, config: Any) -> dict[str, Any]:
        """For a cacheable pass: settings outside its own config (the run's `config`) that its output
        depends on, added to its cache key."""
        return {}

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    def form_for(self, current: Form, later_passes: list[Pass]) -> Form:
        """The form this pass wants its input in, given the current form and what follows.

        Default: keep the current form when accepted, else the other accepted one.
        """
        if current in self.accepts:
            return current
        return "onnx" if "onnx" in self.accepts else "torch"

    def defers(self, form: Form) -> bool:
        """True when, run on a model of this form, the pass leaves work for `finalize` (it then
        appears as an extra step after the next export)."""
        return False

    def check(self, plan: PlanContext) -> None:  # noqa: B027 (optional hook)
        """Raise ConfigError for needs the run could not meet (missing data, bad combinations).

        Called for every pass before any work starts.
        """

    @abstractmethod
    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult: ...

    def finalize(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        """Complete work deferred with `ModelHandle.pending` once the model is ONNX."""
        raise NotImplementedError(f"{self.name} defers no work")
