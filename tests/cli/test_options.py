"""The shared sub-command options: one definition, the same meaning in validate, audit and
calibrate."""

from __future__ import annotations

import argparse

import pytest

from quantbounds.cli.options import add_common_options, figures_dir, seed_type


def _parser(**kw):
    return add_common_options(argparse.ArgumentParser(prog="x"), out="results/x.json", **kw)


def test_defaults_and_figures_dir():
    a = _parser().parse_args([])
    assert (a.out, a.figures, a.no_figures, a.no_progress, a.seed) == (
        "results/x.json",
        "figures",
        False,
        False,
        0,
    )
    assert figures_dir(a) == "figures"
    assert figures_dir(_parser().parse_args(["--no-figures"])) is None
    assert figures_dir(_parser().parse_args(["--figures", ""])) is None
    assert figures_dir(_parser().parse_args(["--figures", "f2"])) == "f2"
    b = _parser(progress=False, seed=False, figures=None).parse_args([])
    assert not hasattr(b, "no_progress") and not hasattr(b, "seed") and figures_dir(b) is None


@pytest.mark.parametrize("text", ["-1", "x", "1.5"])
def test_seed_must_be_a_non_negative_integer(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        seed_type(text)
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(["--seed", text])
    assert err.value.code == 2 and "--seed" in capsys.readouterr().err


def test_every_job_parser_has_the_shared_options():
    from quantbounds.cli.calibrate import _parser as calibrate_parser
    from simulations.validate import _parser as validate_parser

    for parser in (validate_parser(), calibrate_parser()):
        dests = {a.dest for a in parser._actions}
        assert {"out", "figures", "no_figures", "seed"} <= dests
    assert "no_progress" in {a.dest for a in validate_parser()._actions}


def test_audit_accepts_no_progress_and_seed(monkeypatch):
    import simulations.audit as audit

    seen = {}

    def fake_run_audit(acfg, *, show_progress=True, console=None):
        seen.update(acfg=acfg, show_progress=show_progress)
        raise SystemExit(0)

    monkeypatch.setattr(audit, "run_audit", fake_run_audit)
    with pytest.raises(SystemExit):
        audit.main(
            ["--quick", "--no-progress", "--seed", "3", "--no-figures", "--out", "/dev/null"]
        )
    assert seen["show_progress"] is False
    assert (
        dict(seen["acfg"].overrides)["key"] == 3
        and dict(seen["acfg"].nonlinear_overrides)["key"] == 3
    )
    assert seen["acfg"].ts_config().key == 3
