"""Tiny models built in code, importable by tests (`from tiny_models import ...`).

Kept out of conftest.py: a module named `conftest` is shadowed by any conftest.py in a sub-folder.
"""

from __future__ import annotations

from pathlib import Path

IN_FEATURES = 8
HIDDEN = 16
OUT_FEATURES = 4


def make_mlp(seed: int = 0):
    """Linear(8,16) → ReLU → Linear(16,4), deterministic for a seed, in eval mode."""
    return mlp_of(IN_FEATURES, HIDDEN, OUT_FEATURES, seed=seed)


def mlp_of(*sizes: int, seed: int = 0):
    """Linear → ReLU → … → Linear through `sizes` (e.g. 16, 32, 4), deterministic for a seed, in
    eval mode (no dropout or norm layers, so the mode changes no output)."""
    import torch

    torch.manual_seed(seed)
    layers: list = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def export_onnx(module, path: Path, in_features: int = IN_FEATURES, opset: int = 17) -> Path:
    """Export with the TorchScript exporter: input 'x' (batch, in_features), output 'y'."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.randn(2, in_features),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=opset,
        )
    return path


def export_module(module, path: Path, example: tuple, names=("x",), axes: dict | None = None, opset: int = 17) -> Path:
    """Export any module with the TorchScript exporter on `example` inputs: inputs `names`, output
    'y'; `axes` the dynamic axes of the inputs (default: a dynamic batch axis on each)."""
    import torch

    axes = axes if axes is not None else {n: {0: "batch"} for n in names}
    with torch.no_grad():
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=list(names), output_names=["y"],
                          dynamic_axes={**axes, "y": {0: "batch"}}, opset_version=opset)
    return path


def save_graph(nodes, inputs, outputs, inits: dict, path: Path, opset: int = 17) -> Path:
    """An ONNX file from nodes, value infos and {name: array} initializers, checked in full."""
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def ffn_model(path: Path, dead: list[int]):
    """X → MatMul W1 → Add b1 → GELU (Erf form) → MatMul W2 → Add b2 → Add X (residual) → Y, with the
    `dead` hidden neurons zeroed; returns (path, initializers)."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w1[:, dead] = 0
    b1[dead] = 0  # dead neurons: GELU(0) = 0, they contribute nothing
    inits = {
        "W1": w1, "b1": b1, "W2": rng.standard_normal((16, 8)).astype(np.float32),
        "b2": rng.standard_normal(8).astype(np.float32), "sqrt2": np.array(np.sqrt(2), np.float32),
        "one": np.array(1, np.float32), "half": np.array(0.5, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Div", ["h1", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["half", "e1"], ["e2"]),
        helper.make_node("Mul", ["h1", "e2"], ["g"]),
        helper.make_node("MatMul", ["g", "W2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["o2"]),
        helper.make_node("Add", ["X", "o2"], ["Y"], name="residual"),
    ]
    return save_graph(
        nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 5, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 5, 8])], inits, path,
    ), inits


def conv_block(path: Path, opset: int) -> Path:
    """PP-HGNet-like: Conv → Mul by a shape-[1] scale (constant first) → Add a shape-[1] shift →
    hard swish written out (Add 3, Clip 0..6, Mul by its input, Div 6) → y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "B": rng.standard_normal(6).astype(np.float32),
             "s": np.array([1.7], np.float32), "t": np.array([-0.3], np.float32), "three": np.array(3.0, np.float32),
             "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Add", ["a", "three"], ["a3"]), helper.make_node("Clip", ["a3", "zero", "six"], ["cl"]),
             helper.make_node("Mul", ["a", "cl"], ["p"]), helper.make_node("Div", ["p", "six"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8, 8])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def masked_encoder(path: Path, *, pooling: str = "masked", opset: int = 17, mask_type: int = 7) -> Path:  # 7: int64
    """input_ids, attention_mask (batch, sequence) → embedding, tanh → one attention head with an additive
    mask → `pooling`: 'masked' mean over kept tokens (batch, D), 'all' mean over every column
    (reads the padding), 'tokens' the token states (batch, sequence, D). Vocabulary 20, width D = 8."""
    import numpy as np
    from onnx import TensorProto, helper

    D = 8  # noqa: N806 - the model width, as written in the docstring
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in
         [("emb", (20, D)), ("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D))]}
    w.update(one=np.array(1.0, np.float32), big=np.array(-1e9, np.float32), scale=np.array(D ** -0.5, np.float32),
             ax1=np.array([1], np.int64), ax2=np.array([2], np.int64))
    n = helper.make_node
    nodes = [n("Gather", ["emb", "input_ids"], ["e0"]), n("Tanh", ["e0"], ["e"]),  # so int8 quantizes e per call
             *[n("MatMul", ["e", f"w{k}"], [k]) for k in "qkv"],
             n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["qk"]), n("Mul", ["qk", "scale"], ["s"]),
             n("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT), n("Sub", ["one", "m"], ["pad"]),
             n("Mul", ["pad", "big"], ["bias2"]), n("Unsqueeze", ["bias2", "ax1"], ["bias"]), n("Add", ["s", "bias"], ["sm"]),
             n("Softmax", ["sm"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["h"])]
    seq = ["batch", "sequence"]
    if pooling == "tokens":
        out = helper.make_tensor_value_info("h", TensorProto.FLOAT, [*seq, D])
    elif pooling == "all":
        nodes.append(n("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0) if opset < 18 else n("ReduceMean", ["h", "ax1"], ["y"], keepdims=0))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])
    else:
        nodes += [n("Unsqueeze", ["m", "ax2"], ["m3"]), n("Mul", ["h", "m3"], ["hm"]),
                  n("ReduceSum", ["hm", "ax1"], ["num"], keepdims=0), n("ReduceSum", ["m3", "ax1"], ["den"], keepdims=0),
                  n("Div", ["num", "den"], ["y"])]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
           helper.make_tensor_value_info("attention_mask", mask_type, seq)]
    return save_graph(nodes, ins, [out], w, path, opset=opset)
