"""`optimize generate`: try an exported decoder LLM without writing code. A greedy (or sampled,
seeded) decode loop with the KV cache in ONNX Runtime, printing text to stdout as it comes."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.errors import handle_errors
from cli.io import check_verbosity, err, quiet_warnings
from cli.options import Quiet, Verbose

EXAMPLES = [
    ('optimize generate out/ "What is the capital of France?"', "greedy, through the chat template"),
    ('optimize generate out/model.onnx "Once upon a time" --raw --temperature 0.8 --seed 1', "sampled, no template"),
]


@handle_errors
def generate_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An LLM output folder (model.onnx + tokenizer) or its .onnx file.")],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The user message (or raw text with --raw).")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", min=1, max=100_000, help="Stop after this many new tokens.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", min=0.0, max=100.0, help="0: greedy; above 0: sample from softmax(logits / T).")] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed of the sampler (with --temperature > 0).")] = None,
    threads: Annotated[int, typer.Option("--threads", metavar="N", min=1, max=1024, help="ONNX Runtime intra-op threads.")] = 2,
    raw: Annotated[bool, typer.Option("--raw", help="Feed PROMPT as is, not through the chat template.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Generate text from an exported decoder LLM, streaming tokens to stdout."""
    import sys

    check_verbosity(quiet, verbose)
    with quiet_warnings(quiet):
        from optimize.llm.generation import open_output, stream_text

        lm, tokenizer = open_output(output, threads=threads)

        def emit(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        start = time.perf_counter()
        new = stream_text(lm, tokenizer, prompt, max_new_tokens, temperature=temperature, seed=seed, chat=not raw,
                          emit=emit)
        seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not quiet:
        err(f"{len(new)} tokens in {seconds:.2f} s ({len(new) / seconds:.1f} tokens/s incl. prefill, {threads} threads)")
