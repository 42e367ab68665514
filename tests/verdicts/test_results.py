"""print_verdicts: a rich table on a terminal, a plain layout with nothing cut in a log."""

from __future__ import annotations

import io

from rich.console import Console

from quantbounds.verdicts.results import Verdict, plain_verdicts, print_verdicts

LONG = "the quantization term exceeds the estimation error in 93 % of (r, N, b) cells; " * 3
VERDICTS = [
    Verdict(
        claim="Thm 3.1 quantization term: factor 4 per bit",
        verdict="holds",
        predicted=4.0,
        measured=3.987654,
        ci=(3.9, 4.1),
        conditions=LONG,
    ),
    Verdict(
        claim="b* rule",
        verdict="fails",
        predicted=[0.5, 0.5],
        measured=[0.1, 0.2],
        ci=None,
        conditions="",
    ),
]


def test_not_a_terminal_gives_the_plain_layout_unwrapped():
    buf = io.StringIO()
    print_verdicts(VERDICTS, title="audit", console=Console(file=buf, width=80))
    text = buf.getvalue()
    assert text.splitlines()[0] == "audit (2)"
    assert "[holds] Thm 3.1 quantization term: factor 4 per bit" in text
    assert "measured 3.988  95% CI [3.9, 4.1]" in text
    assert f"conditions: {LONG}" in text  # in full, on one line, despite width 80
    assert "[fails] b* rule" in text and "95% CI —" in text
    assert "│" not in text and "┃" not in text  # no table borders
    assert text == plain_verdicts([v.to_dict() for v in VERDICTS], title="audit") + "\n"


def test_a_terminal_gets_the_rich_table():
    buf = io.StringIO()
    print_verdicts(
        VERDICTS, title="audit", console=Console(file=buf, width=200, force_terminal=True)
    )
    assert "┃" in buf.getvalue() or "│" in buf.getvalue()
    buf = io.StringIO()  # and the plain layout can be asked for on a terminal too
    print_verdicts(VERDICTS, console=Console(file=buf, force_terminal=True), plain=True)
    assert "[holds] Thm 3.1" in buf.getvalue()


def test_dicts_from_a_results_file_print_the_same():
    a, b = io.StringIO(), io.StringIO()
    print_verdicts(VERDICTS, console=Console(file=a))
    print_verdicts([v.to_dict() for v in VERDICTS], console=Console(file=b))
    assert a.getvalue() == b.getvalue()
