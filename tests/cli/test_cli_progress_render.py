"""Progress displays, logging setup and the report rendering helpers."""

from __future__ import annotations

import io
import logging

from cli_helpers import FAILED_GATE, PASSED_GATE, make_report
from rich.console import Console

from cli.progress import NoProgress, PlainProgress, RichProgress, make_progress, setup_logging
from cli.render import gate_failure_lines, github_error, type_name
from cli.report_view import print_report
from optimize.report import Gate


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_progress_lines_and_throttle():
    out, clock = io.StringIO(), Clock()
    p = PlainProgress(stream=out, interval=1.0, clock=clock)
    p.start("distill", "epoch", 5)
    p.advance("distill", info="loss 0.9")  # printed: first advance
    clock.t = 0.3
    p.advance("distill", info="loss 0.5")  # throttled
    clock.t = 0.6
    p.advance("distill", info="loss 0.3")  # throttled
    clock.t = 1.2
    p.advance("distill", info="loss 0.2")  # printed: a second passed
    clock.t = 1.3
    p.advance("distill", info="loss 0.12")  # printed: the last one always is
    clock.t = 2.0
    p.finish("distill")
    assert out.getvalue().splitlines() == [
        "[distill] epoch (0/5)",
        "[distill] epoch 1/5 loss 0.9",
        "[distill] epoch 4/5 loss 0.2",
        "[distill] epoch 5/5 loss 0.12",
        "[distill] done in 2.0s",
    ]


def test_plain_progress_is_forgiving():
    out = io.StringIO()
    p = PlainProgress(stream=out, clock=Clock())
    p.advance("x", 3)  # never started
    p.finish("x", info="ok")
    p.finish("never")
    assert out.getvalue().splitlines() == ["[x] 3", "[x] done in 0.0s ok", "[never] done"]  # one label per line


def test_rich_progress_runs_without_a_terminal():
    buf = io.StringIO()
    p = RichProgress(console=Console(file=buf, force_terminal=False, width=100))
    with p:
        p.start("quantize", "calibrating [minmax]", 3)
        p.advance("quantize", 2, info="batch 2")
        p.start("export", "torch → onnx", None)
        p.finish("export")
        p.finish("quantize", info="done")
        p.advance("unknown")
        p.finish("unknown")
    assert "calibrating [minmax]" in buf.getvalue()


def test_make_progress_choices():
    assert isinstance(make_progress("none"), NoProgress)
    assert isinstance(make_progress("rich", quiet=True), NoProgress)
    assert isinstance(make_progress("plain"), PlainProgress)
    assert isinstance(make_progress("auto", stream=io.StringIO()), PlainProgress)  # not a terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_progress("auto", stream=Tty()), RichProgress)
    assert isinstance(make_progress("rich"), RichProgress)


def test_setup_logging_levels_and_idempotence(capsys):
    setup_logging(quiet=True)
    setup_logging(quiet=True)
    log = logging.getLogger("optimize.test")
    log.info("hidden")
    log.warning("shown once")
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: shown once"]
    setup_logging(verbose=True)
    logging.getLogger("passes.prune").debug("dbg")
    assert "debug" in capsys.readouterr().err
    setup_logging()
    logging.getLogger("optimize").debug("nope")
    logging.getLogger("optimize").info("hello")
    assert capsys.readouterr().err == "hello\n"


def test_gate_lines():
    report = make_report(
        "gate_failed",
        [
            FAILED_GATE,
            PASSED_GATE,
            Gate(name="max_size_mb", limit=1.0, value=3.25, passed=False, message=""),
            Gate(name="max_accuracy_drop", limit=1.0, value=None, passed=False, message=""),
            Gate(name="max_latency_ms", limit=2.0, value=3.0, passed=False, message="max_latency_ms: 3 ms > 2 ms FAILED"),
        ],
    )
    assert gate_failure_lines(report) == [
        "gate min_speedup: 0.82 < 1 FAILED",
        "gate max_size_mb: 3.25 > 1 FAILED",
        "gate max_accuracy_drop: not measured (limit 1) FAILED",
        "gate max_latency_ms: 3 ms > 2 ms FAILED",  # the library's own wording wins when it has one
    ]


def test_github_error_escaping():
    assert github_error("a%b\nc") == "::error title=optimize gate::a%25b%0Ac"
    assert github_error("x", title="t:1,2") == "::error title=t%3A1%2C2::x"


def test_report_renders_user_text_literally():
    buf = io.StringIO()
    print_report(make_report(), Console(file=buf, width=200))
    text = buf.getvalue()
    assert "[check VNNI]" in text  # not swallowed as rich markup
    assert "in/model.onnx [onnx] → out/model.opt.onnx [onnx]" in text
    assert "wrote model" in text


def test_type_names():
    from typing import Literal

    assert type_name(Literal["a", "b"]) == "a|b"
    assert type_name(int | None) == "int | None"
    assert type_name(list[str]) == "list[str]"
    assert type_name(dict[str, int]) == "dict[str, int]"
