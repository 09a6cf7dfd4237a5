"""Tiny random decoder LMs and a word-level tokenizer built in code (importable by the LLM tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = ("the capital of france is paris . what a nice day it was and we went to see sea sky blue "
         "red green one two three four five hello world user assistant : ? ! you are helpful").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}")
VOCAB = 128


def tiny_config(model_type: str = "llama", tied: bool = False, intermediate: int = 128) -> Any:
    """`intermediate` other than VOCAB for ONNX Runtime GenAI's model builder, which takes any Linear
    with vocabulary-size outputs for the head."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=intermediate,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                               tie_word_embeddings=tied)
    return cfg


def tiny_model(model_type: str = "llama", seed: int = 0, tied: bool = False, intermediate: int = 128) -> Any:
    """`tied`: lm_head shares the embedding table (as SmolLM2's does)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, tied, intermediate))
    with torch.no_grad():  # larger logits than the default init, so argmax ties are unlikely
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_folder(root: Path, model_type: str = "llama", tied: bool = False, intermediate: int = 128) -> Path:
    """A Hugging Face causal-LM folder: config.json, model.safetensors, tokenizer files."""
    folder = root / f"tiny-{model_type}{'-tied' if tied else ''}{'' if intermediate == 128 else f'-ffn{intermediate}'}"
    tiny_model(model_type, tied=tied, intermediate=intermediate).save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(str(folder))
    return folder


def tiny_export(root: Path, model_type: str = "llama", tied: bool = False) -> Path:
    """The tiny model exported with its KV cache (optimize.llm.export): root/onnx/model.onnx."""
    from optimize.llm.export import export_causal_lm
    from optimize.llm.load import load_causal_lm

    lm = load_causal_lm(tiny_folder(root, model_type, tied))
    return export_causal_lm(lm, root / "onnx" / "model.onnx")


def tiny_int4_pair(root: Path) -> tuple[Path, Path, Path, dict]:
    """The tied tiny model exported, then int4 minmax (block 16) twice: as the decode path quantizes
    it (accuracy_level 4, folded correction) and at accuracy_level 1 with a float head, the
    reference a prompt path is compared with. Returns (fp32, plain, level1, plain's facts)."""
    from passes.quantize.int4 import quantize_int4

    fp32 = tiny_export(root, tied=True)
    plain, level1 = root / "plain" / "model.onnx", root / "level1" / "model.onnx"
    facts = quantize_int4(fp32, plain, block_size=16, algorithm="minmax", correction="folded")
    quantize_int4(fp32, level1, block_size=16, algorithm="minmax", accuracy_level=1, head="float")
    return fp32, plain, level1, facts
