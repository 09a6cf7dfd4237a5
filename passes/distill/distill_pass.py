"""The distill pass: plan-time checks, the student (the current model, or one derived from the
teacher), the training loop (`passes/distill/training.py`) and the result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optimize.errors import ConfigError
from optimize.pass_api import Pass
from passes.distill.config import DistillConfig, fail

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.handle import ModelHandle
    from optimize.pass_api import PassResult


# e.g. `sparsity: auto` chose 0: training a copy of the teacher toward itself only adds noise (measured on
# all-MiniLM-L6-v2: one epoch at lr 1e-4 took the int8 model's min embedding cosine from 0.975 to 0.954)
SAME_AS_TEACHER = ("distillation skipped: the student has the teacher's weights (nothing before distill changed "
                   "the model), so there is nothing to recover")


def same_weights(student: Any, teacher: Any) -> bool:
    """Whether two modules hold the same tensors under the same names (no parametrization, no pruning)."""
    import torch

    a, b = student.state_dict(), teacher.state_dict()
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


class DistillPass(Pass):
    name = "distill"
    summary = (
        "Train a student (the current pruned/quantization-simulated model, or one derived from the teacher by "
        "width/depth, or a factory) to match the input model (the teacher): KL on temperature-softened logits × T² "
        "blended with the hard-label loss by alpha, optional feature losses; masks and fake quantization stay applied."
    )
    config_cls = DistillConfig
    accepts = frozenset({"torch"})
    trains = True
    config: DistillConfig
    _key = "distill"

    # ------------------------------------------------------------------ plan time

    def check(self, plan: PlanContext) -> None:
        cfg = self.config
        self._key = plan.key
        if plan.input_form == "onnx":
            raise ConfigError(
                "distill needs the teacher in torch form; the input model is ONNX (no ONNX→torch converter)",
                key=plan.key,
            )
        if plan.form_at_pass == "onnx":
            raise ConfigError(
                "distill trains the torch model, but an earlier pass leaves it in ONNX form "
                "(no ONNX→torch converter); move distill before that pass",
                key=plan.key,
            )
        if not plan.has_data("train") and not plan.has_input_spec:
            raise ConfigError(
                "distill needs training data (data.train) or declared model.inputs for unlabeled random inputs",
                key=plan.key,
            )
        if cfg.student is not None:
            earlier = [p.name for p in plan.earlier if p.name != "export"]
            if earlier:
                raise ConfigError(
                    f"student builds a new model from the teacher, so what {', '.join(earlier)} did before distill "
                    "would be discarded; put those passes after distill (or omit student to train the current model)",
                    key=f"{plan.key}.student",
                )
            if (cfg.student.width is not None or cfg.student.depth is not None) and not plan.has_input_spec:
                raise ConfigError(
                    "student.width/depth trace the model with example inputs: declare model.inputs (name, shape, dtype)",
                    key=f"{plan.key}.student",
                )
            if cfg.student.factory:
                self._check_factory(cfg.student.factory, plan)
        if (cfg.keep_best or cfg.early_stopping_patience) and not plan.has_data("eval"):
            what = "keep_best" if cfg.keep_best else "early_stopping_patience"
            raise ConfigError(f"{what} selects on the eval metric: declare data.eval", key=f"{plan.key}.{what}")
        module = getattr(getattr(plan, "model", None), "module", None)
        if cfg.freeze and module is not None and cfg.student is None and not plan.earlier:
            self._check_freeze(cfg.freeze, module, plan.key)
        if cfg.features and module is not None:
            from passes.distill.features import check_names

            names_kept = cfg.student is None or (cfg.student.depth is None and cfg.student.factory is None)
            check_names(cfg.features, module, module if names_kept else None, plan.key)

    @staticmethod
    def _check_freeze(patterns: list[str], module: Any, key: str) -> None:
        """With distill the first pass (the student is the input model itself), a freeze pattern
        that matches none of its parameters is a typo: exit 2 before any work. After other passes the
        names can change (split attention, pruning masks): the run-time check judges those."""
        from fnmatch import fnmatchcase

        names = [n for n, _ in module.named_parameters()]
        unmatched = [pat for pat in patterns if not any(fnmatchcase(n, pat) for n in names)]
        if names and unmatched:
            raise ConfigError(f"{', '.join(unmatched)} matches no parameter of the model (names look like {names[0]!r})",
                              key=f"{key}.freeze")

    def _check_factory(self, spec: str, plan: PlanContext) -> None:
        import importlib
        import importlib.util

        module_name, _, attr = spec.partition(":")
        key = f"{plan.key}.student.factory"
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            import sys
            from pathlib import Path

            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            try:
                found = importlib.util.find_spec(module_name) is not None
            except (ImportError, ValueError):
                found = False
        if not found:
            raise ConfigError(f"cannot find module '{module_name}' for the student factory '{spec}'", key=key)

    # ------------------------------------------------------------------ run time

    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        import torch

        from optimize.pass_api import PassResult
        from passes.distill.setup import prepare
        from passes.distill.students import param_count
        from passes.distill.training import train_student

        teacher = self._teacher(model, ctx)
        setup = prepare(model, ctx, self.config)
        torch.manual_seed(ctx.seed)
        student, metrics, student_notes = self._student(model, teacher, ctx)
        if self.config.student is None and same_weights(student, teacher.module):
            return PassResult(model=model, metrics={**metrics, "skipped": SAME_AS_TEACHER}, notes=[SAME_AS_TEACHER])
        metrics["teacher_params"] = param_count(teacher.module)
        metrics["student_params"] = param_count(student)
        if self.config.features:
            from passes.distill.features import check_names

            check_names(self.config.features, teacher.module, student, self._key)
        trained = train_student(student, teacher.module, setup, ctx, self.config, self._key)
        metrics.update(trained.metrics)
        notes = setup.notes + student_notes + trained.notes
        return PassResult(model=model.replace(module=trained.student), metrics=metrics, notes=notes)

    @staticmethod
    def _teacher(model: ModelHandle, ctx: RunContext) -> ModelHandle:
        """The pipeline's input model, in torch form (the current model must be torch too)."""
        if model.form != "torch" or model.module is None:
            fail(f"needs the model in torch form (got {model.form})")
        teacher = ctx.input_model
        if teacher is None or teacher.form != "torch" or teacher.module is None:
            fail("needs the teacher (the pipeline's input model) in torch form")
        return teacher

    def _student(self, model: ModelHandle, teacher: ModelHandle, ctx: RunContext) -> tuple[Any, dict[str, Any], list[str]]:
        """(student module, metrics, notes): derived by `student`, else a copy of the current model."""
        if self.config.student is not None:
            from passes.distill.students import build_student

            return build_student(self.config.student, teacher, ctx, f"{self._key}.student")
        from optimize.export import copy_module

        return copy_module(model.module), {"student": "the current model"}, []
