"""The prune pass's settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from optimize.pass_api import PassConfig

SEARCH_GRID = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75]
Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]  # bounds in the JSON schema; messages from _ratio below


def _check_cut(what: str, value: int | list[int], method: str) -> None:
    """drop_layers / drop_attention: a count ≥ 0 or distinct indices ≥ 0, with method structured."""
    if value and method != "structured":
        raise ValueError(f"{what} applies to method: structured")
    if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
        raise ValueError(f"{what}: block indices must be distinct and at least 0 (one at least), got {value}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{what} must be at least 0, got {value}")


def _check_shapes(cfg: PruneConfig) -> None:
    """shapes: structured, a target, no auto ratios; each candidate valid as a whole config."""
    if not cfg.shapes:
        if cfg.target_speedup is not None:
            raise ValueError("target_speedup chooses among shapes: list the candidate shapes")
        return
    if cfg.method != "structured":
        raise ValueError("shapes applies to method: structured")
    if cfg.target_speedup is None:
        raise ValueError("shapes: set target_speedup, the speedup a shape must reach to be kept")
    if "auto" in (cfg.sparsity, cfg.head_sparsity):
        raise ValueError("shapes and sparsity / head_sparsity auto both choose the ratios: use one of them")
    for i, shape in enumerate(cfg.shapes):
        merged = {**cfg.model_dump(), **shape.overrides(), "shapes": [], "target_speedup": None}
        try:
            PruneConfig.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"shapes[{i}] ({shape.label()}): {first['msg'].removeprefix('Value error, ')}") from None


def shape_config(cfg: PruneConfig, shape: PruneShape) -> PruneConfig:
    """The pass's config with one candidate shape applied (and no shapes left to choose)."""
    return cfg.model_copy(update={**shape.overrides(), "shapes": [], "target_speedup": None})


class PruneShape(BaseModel):
    """One candidate of `shapes`: the settings it changes (the rest are the pass's own)."""

    model_config = ConfigDict(extra="forbid")
    drop_layers: int | list[int] | None = None
    drop_attention: int | list[int] | None = None
    sparsity: Ratio | None = None
    head_sparsity: Ratio | None = None
    scope: Literal["layer", "global"] | None = None
    qk_rank: int | None = Field(None, ge=0, le=4096)
    round_to: int | None = Field(None, gt=0)
    attention_stand_in: Literal["none", "mean"] | None = None

    def overrides(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)

    def label(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.overrides().items()) or "the pass's own settings"


class PruneConfig(PassConfig):
    type: Literal["prune"] = Field("prune", description="Pass name: prune")
    method: Literal["magnitude", "structured", "nm"] = Field(
        "magnitude",
        description="magnitude: zero the smallest weights; structured: remove whole output channels/neurons, attention heads and FFN neurons (torch; on ONNX: output neurons/channels of MatMul/Gemm/Conv chains); nm: keep N of every M consecutive weights.",
    )
    sparsity: Ratio | Literal["auto"] = Field(
        0.5,
        description="Fraction of weights (magnitude) or of channels / FFN neurons per layer (structured) to remove; structured: auto = the largest value on search_grid whose briefly distilled result meets the quality target (docs/distill.md).",
    )
    scope: Literal["layer", "global"] = Field(
        "layer",
        description="Rank weights (magnitude), or channel groups and attention heads (structured), within each layer, or "
        "across all selected layers (global: layers lose different fractions, at most max_ratio of one layer's; every "
        "attention module keeps one head at least).",
    )
    importance: Literal["l1", "l2", "taylor", "fisher"] = Field(
        "l2",
        description="structured: channel importance. l1/l2: weight norm; taylor: |weight × gradient| of a loss on data.calibration (or data.train) samples; fisher: how far removing each head / neuron moves the model's outputs on those samples (squared mask gradients; best on pretrained transformers, docs/distill.md).",
    )
    importance_samples: int = Field(
        128, ge=1, le=100_000, description="structured, importance taylor / fisher: data samples whose gradients are summed."
    )
    refit: bool = Field(
        False,
        description="structured: after pruning, re-solve each Linear layer whose inputs were removed (FFN output, attention output projection; a CNN's or MLP's inner layers against the outputs they kept) by least squares so its outputs match the unpruned model's on data.calibration (or data.train) samples; the step's refit metrics list any layer skipped, with why.",
    )
    refit_samples: int = Field(256, ge=1, le=100_000, description="refit: data samples (text: their real tokens are the rows).")
    layer_sparsity: dict[str, float] = Field(
        default_factory=dict,
        description="Per-layer sparsity overriding `sparsity`: glob pattern on the layer / initializer name → fraction in [0, 1). The first matching pattern wins.",
    )
    max_ratio: float = Field(
        1.0, gt=0.0, le=1.0,
        description="structured: the largest fraction of any one layer's channels, or of one attention module's heads, that may be removed (matters with scope: global).",
    )
    head_sparsity: Ratio | Literal["auto"] = Field(
        0.0,
        description="structured, transformers: fraction of attention heads removed in each attention module (whole heads; `sparsity` then applies to FFN neurons; scope: global, of all heads under one ranking); auto: searched like sparsity (with both auto, half the FFN ratio).",
    )
    drop_layers: int | list[int] = Field(
        0,
        description="structured, transformer encoders: remove whole blocks before any head / FFN pruning: a count (the "
        "blocks whose removal moves the outputs least on importance_samples of data.calibration or data.train; every "
        "combination when there are at most 64, else greedily) or a list of block indices (0-based). A block's "
        "attention goes with it, so at one speed more of the model stays than by narrowing every block "
        "(docs/distill.md). The blocks left are renumbered from 0: include / exclude / layer_sparsity patterns and "
        "later passes' layer names see the new numbers (the step's metrics list the original indices kept).",
    )
    drop_attention: int | list[int] = Field(
        0,
        description="structured, BERT-style encoders: remove attention sublayers only (each block's FFN stays), after "
        "drop_layers (indices then count the blocks left) and before head / FFN pruning: a count (chosen like "
        "drop_layers, on importance_samples of data.calibration or data.train) or a list of block indices (0-based). "
        "An attention sublayer costs about 0.7 of an FFN in int8 on a CPU and removing it moves the outputs less than "
        "removing its block (docs/distill.md). Applies where the attention sublayer holds its own residual add and "
        "LayerNorm (transformers' BERT family); other models are refused.",
    )
    attention_stand_in: Literal["none", "mean"] = Field(
        "none",
        description="with drop_attention: what stands in for each attention sublayer taken out. none: nothing (the "
        "tokens pass unchanged to the block's FFN); mean: the sublayer's LayerNorm over the tokens plus one linear map "
        "of the mean of the sequence's tokens, fitted by least squares against the input model's sublayer on "
        "importance_samples of data.calibration or data.train (before head / FFN pruning, so their importance is measured "
        "with it, and again after). On all-MiniLM-L6-v2 with block 2's attention out it moved the untrained embeddings "
        "far less (cosine min 0.865 → 0.936), but after distillation it gained nothing and ran 4% slower in int8 "
        "(its masked mean, add and LayerNorm run over every token; docs/distill.md): for pruning without distillation.",
    )
    qk_rank: int = Field(
        0, ge=0, le=4096,
        description="structured, transformers' BERT-family encoders: queries and keys of this many dims per head (0: "
        "unchanged), after head / FFN pruning. Each head's query-key product is replaced by its best approximation "
        "of this rank over the attention's input tokens on importance_samples of data.calibration or data.train; "
        "values, the softmax's scale and the rest stay. At half the head size it moved a sentence encoder's outputs "
        "far less than the FFN neurons the same speed buys (docs/distill.md). Other attention code is refused.",
    )
    search_grid: list[float] = Field(
        list(SEARCH_GRID), min_length=1,
        description="auto: the ratios probed (bisected: quality falls as the ratio grows).",
    )
    search_budget_minutes: float = Field(
        5.0, gt=0, le=10_000, description="auto: no probe starts once the next one would end past this many minutes."
    )
    search_samples: int = Field(
        512, ge=1, le=10_000_000, description="auto: training samples each probe is distilled on (one epoch)."
    )
    search_lr: float = Field(5e-4, gt=0, le=10, description="auto: learning rate of each probe's short distillation.")
    search_warmup_steps: int = Field(2, ge=0, le=100_000, description="auto: warm-up steps of each probe's distillation.")
    search_min_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="auto: the min output cosine (over data.eval, against the input model) a probe must reach; default gates.min_embedding_cosine, else gates.min_parity_cosine, raised by what a quantize pass after it (on ONNX) costs the input model, measured once on the search's data.eval samples (the probes are measured before quantization; an estimate: the baseline export, no fp16/graph pass between, outside search_budget_minutes). A value given here is used as given.",
    )
    shapes: list[PruneShape] = Field(
        default_factory=list,
        description="structured, torch: candidate shapes in order of preference, each changing some of drop_layers, "
        "drop_attention, sparsity, head_sparsity, scope, qk_rank, round_to, attention_stand_in. Each is applied (untrained), "
        "exported, put through the pipeline's quantize pass when one follows, and timed against the input model "
        "put through the same, interleaved, on this machine at measure.batch; the first whose speedup reaches "
        "target_speedup is kept (none: the fastest, with a note). Which structure buys speed depends on the CPU: on "
        "all-MiniLM-L6-v2 in int8 an attention sublayer cost about 0.7 of an FFN on an AMD Zen 5 and about six "
        "times 128 FFN neurons a block on an Intel Xeon with AMX (docs/distill.md). The step's metrics (`shapes`) "
        "hold every shape's speedup and untrained output cosine.",
    )
    target_speedup: float | None = Field(
        None, gt=0, le=1000,
        description="shapes: the speedup (the input model's latency / the shape's, both through the passes named "
        "in shapes; median of interleaved rounds) a shape must reach to be kept.",
    )
    shape_rounds: int = Field(30, ge=3, le=10_000, description="shapes: interleaved timing rounds.")
    keep_hidden_size: bool = Field(
        True,
        description="structured, transformers: never prune the residual-stream width (layers whose output channels are coupled to a LayerNorm or an embedding); only heads and FFN neurons go.",
    )
    n: int = Field(2, ge=1, description="nm: weights kept in each group.")
    m: int = Field(4, ge=2, le=64, description="nm: group size along the input dimension.")
    include: list[str] = Field(
        default_factory=list, description="Only layers / initializers whose name matches one of these glob patterns."
    )
    exclude: list[str] = Field(default_factory=list, description="Skip layers / initializers matching these globs.")
    keep_output_layer: bool = Field(
        True, description="Never prune the final layer (the classifier head), whose outputs are the model's outputs."
    )
    round_to: int | None = Field(None, gt=0, description="structured: keep channel counts a multiple of this (torch models: rounded down by Torch-Pruning, so a little more than sparsity goes, e.g. 1,229 → 1,216 FFN neurons at 64; ONNX models: rounded up).")
    steps: int = Field(
        1, ge=1, le=1000,
        description="Gradual pruning: reach the target sparsity over this many steps (magnitude and structured, torch).",
    )
    schedule: Literal["linear", "cubic"] = Field(
        "cubic",
        description="Gradual pruning: sparsity after step k of K is s·k/K (linear) or s·(1−(1−k/K)³) (cubic, Zhu & Gupta 2017).",
    )
    finetune_epochs: int = Field(
        0, ge=0, le=10_000,
        description="Gradual pruning: epochs of fine-tuning (the distill loop, teacher = input model) between steps; needs data.train.",
    )
    finetune_lr: float = Field(1e-3, gt=0, le=10, description="Learning rate of the fine-tuning between steps.")
    nm_gpu_benchmark: bool = Field(
        True,
        description="nm on --device cuda: time the 2:4 model with sparse semi-structured kernels against dense fp16/bf16 in torch and report both.",
    )

    @field_validator("sparsity", "head_sparsity", mode="before")
    @classmethod
    def _ratio(cls, v: object) -> object:
        """One message for an out-of-range number (the union would report each branch's error)."""
        if isinstance(v, str) and v != "auto":
            raise ValueError(f"expected a number in [0, 1) or auto, got {v!r}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v < 0.0:
                raise ValueError(f"must be at least 0.0 (got {v})")
            if v >= 1.0:
                raise ValueError(f"must be less than 1.0 (got {v})")
        return v

    @field_validator("drop_layers", "drop_attention", mode="before")
    @classmethod
    def _no_bools(cls, v: object) -> object:
        """true / false are not block counts or indices (pydantic would read them as 1 / 0)."""
        if isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v)):
            raise ValueError(f"expected a block count or a list of block indices, got {v!r}")
        return v

    @field_validator("search_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        bad = [g for g in v if not 0.0 < g < 1.0]
        if bad:
            raise ValueError(f"search_grid values must be in (0, 1): {bad}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> PruneConfig:
        if self.method == "nm" and self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        if self.method == "nm" and self.steps > 1:
            raise ValueError("steps > 1 (gradual pruning) applies to magnitude and structured, not to nm")
        bad = {k: v for k, v in self.layer_sparsity.items() if not 0.0 <= v < 1.0}
        if bad:
            raise ValueError(f"layer_sparsity values must be in [0, 1): {bad}")
        if self.importance in ("taylor", "fisher") and self.method != "structured":
            raise ValueError(f"importance: {self.importance} applies to method: structured")
        auto = self.sparsity == "auto" or self.head_sparsity == "auto"
        if self.refit and self.method != "structured":
            raise ValueError("refit applies to method: structured")
        if auto and self.method != "structured":
            raise ValueError("sparsity/head_sparsity auto applies to method: structured")
        for what in ("drop_layers", "drop_attention"):
            _check_cut(what, getattr(self, what), self.method)
        if self.attention_stand_in != "none" and not self.drop_attention:
            raise ValueError("attention_stand_in stands in for the attention sublayers drop_attention takes out: set drop_attention")
        if self.qk_rank and self.method != "structured":
            raise ValueError("qk_rank applies to method: structured")
        _check_shapes(self)
        if self.finetune_epochs and self.steps == 1:
            raise ValueError("finetune_epochs runs between gradual steps: set steps > 1 (or use a distill pass after prune)")
        return self

