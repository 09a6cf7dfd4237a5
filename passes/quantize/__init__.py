"""quantize: ONNX Runtime's quantizers made dependable on any valid ONNX model, plus
quantization-aware training on torch models.

One job per module:
- `config` — `QuantizeConfig` (modes, bits, formats, calibration, fallback, weight-only, fusion);
- `quantize_pass` — `QuantizePass`: planning checks and the route through the modules below;
- `prepare` — make a model quantizable first (Constant-node weights → initializers, constant
  folding, outer-scope weights given to If/Loop bodies, opset ≥ 13 for per-channel QDQ);
- `ort` — the calls into ONNX Runtime's quantization tools (dynamic, static, weight-only, fusion,
  `quant_pre_process`); `calibration` — the batched calibration reader;
- `job` / `repair` — one quantization with its nodes that break the quantizer kept in float;
- `fallback` — keep the most sensitive layers in float to meet a parity floor / accuracy gate;
- `auto` / `search` — `format: auto`: candidates checked and timed on this hardware;
- `lowbit` — binary / ternary weights; `grid` / `qat` — ORT's integer grid and the QAT set-up;
- `report` — what the step reports, counted from the written file.

Importing this package imports only pydantic (torch, onnx and onnxruntime load inside `run`).
"""

from passes.quantize.config import QuantizeConfig
from passes.quantize.quantize_pass import QuantizePass

__all__ = ["QuantizeConfig", "QuantizePass"]
