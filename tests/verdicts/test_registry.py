"""The claim registry: verbatim quotes, valid entries, clear errors, verdict wiring, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from quantbounds.verdicts import registry as regmod
from quantbounds.verdicts.registry import (
    KINDS,
    ORIGINS,
    SEED_FILES,
    Claim,
    ClaimTest,
    Convention,
    RegistryError,
    build_registry,
    check_quotes,
    find_sources,
    normalize_ws,
    readable,
    registry,
)
from quantbounds.verdicts.registry_check import (
    LEGACY_MAP,
    REMOVE,
    VerdictClaimError,
    check_verdicts,
    suggest_claim_id,
    verdict_problems,
    wire_legacy,
)


def _good(**over) -> dict:
    """Keyword arguments of a valid Claim; ``over`` replaces some."""
    kw = dict(
        id="s001.test.entry",
        source=SEED_FILES["s001"],
        origin="seed",
        kind="scaling_law",
        quote="The rank r appears linearly in the bound",
        quantity="rank exponent of E‖ε_BA‖²",
        convention=Convention(scale="one", step="Δ = 2^{1−b}·R", range="absmax per tensor"),
        test=ClaimTest(
            statistic="OLS slope of ln E in ln r",
            decision="holds if the CI lies within 1 ± margin",
            margin=0.1,
            margin_units="exponent",
            predicted=1.0,
        ),
    )
    kw.update(over)
    return kw


def _test(**over) -> ClaimTest:
    base = dict(
        statistic="OLS slope of ln E in ln r",
        decision="holds if the CI lies within 1 ± margin",
        margin=0.1,
        margin_units="exponent",
        predicted=1.0,
    )
    base.update(over)
    return ClaimTest(**base)


# -- the entries -------------------------------------------------------------------------------


def test_quotes_are_verbatim_substrings_of_their_sources():
    shared = find_sources()
    if shared is None:
        pytest.skip(
            "../shared (DESIGN.md and seeds/) not found next to the repository; "
            "set QUANTBOUNDS_SHARED"
        )
    assert check_quotes(shared) == []
    # the check itself can fail: a quote that is not in the seed is reported
    fake = Claim(**_good(quote="degradation scaling quadratically with rank"))
    assert check_quotes(shared, [fake]) == [
        f"s001.test.entry: {SEED_FILES['s001']}: 'degradation scaling quadratically with rank'"
    ]


def test_whitespace_normalisation_and_mojibake_display():
    assert normalize_ws("  a \n\t b  ") == "a b"
    assert readable("| r â‰¤ 8 | 8-bit |") == "| r ≤ 8 | 8-bit |"
    assert readable("plain ≤ text") == "plain ≤ text"


def test_every_entry_valid_ids_unique_and_kinds_known():
    reg = registry()
    ids = list(reg)
    assert len(ids) == len(set(ids)) == len(reg)
    assert {c.kind for c in reg.values()} <= set(KINDS)
    assert {c.origin for c in reg.values()} == set(ORIGINS)
    # every kind is used by some seed claim
    assert {c.kind for c in reg.select(origin="seed")} == set(KINDS)
    for c in reg.values():
        assert c.test.alpha > 0 and math.isfinite(c.test.margin)
        assert (c.origin == "toolkit") == (c.source == "DESIGN.md") == c.id.startswith("toolkit.")
    # building the same entries again gives the same registry (stable ids)
    from quantbounds.verdicts._claims_table import claims

    assert list(build_registry(claims())) == ids


def test_registry_covers_the_claims_the_issue_names():
    reg = registry()
    for cid in (
        "s001.thm3_1.bound",
        "s001.thm3_1.gen_term",
        "s001.thm3_1.quant_term",
        "s001.thm3_2.rule",
        "s001.thm3_2.rank_term",
        "s001.thm3_2.n_term",
        "s001.thm3_2.sigma_term",
        "s001.thm3_3.bound",
        "s001.s4_2.degradation_linear_rank",
        "s001.s4_2.grad_var_rank",
        "s001.s4_2.grad_var_bits",
        "s001.s4_3.avoid_4bit_gt_8",
        "s001.s5_1.larger_data_lower_precision",
        "s003.validation.correlation",
        "s003.guideline.r_le_8",
        "s003.guideline.r_9_16",
        "s003.guideline.r_gt_16",
        "s003.grid",
        "s002.abstract.f1_figures",
        "s002.abstract.size_reduction",
        "s002.abstract.nf4_matches_fp16",
        "s002.abstract.fp4_underperforms",
        "s002.abstract.regularization",
        "s002.lloyd_max.optimal_beats_uniform",
        "toolkit.lloyd_max.reference",
        "toolkit.moments.fro",
    ):
        assert cid in reg, cid
    assert reg["s001.thm3_1.gen_term"].kind == "upper_bound"  # a bound, not an exponent
    assert reg["s001.s4_2.degradation_linear_rank"].kind == "scaling_law"
    assert reg["s003.validation.correlation"].test.predicted == 0.9
    assert dict(reg["s001.s4_2.degradation_linear_rank"].test.by_scale)["alpha_r"] == -1.0
    assert reg["toolkit.moments.fro"].origin == "toolkit"


def test_no_worked_example_5_7():
    """No seed contains 'b* ≈ 5.7' (DESIGN.md §2): it must be neither judged nor quoted."""
    for c in registry().values():
        for _, q in c.quotes:
            assert "5.7" not in q, c.id
        assert "worked" not in c.id


def test_untestable_entries_say_why_and_stand_ins_state_the_difference():
    reg = registry()
    untestable = [c for c in reg.values() if not c.testable]
    assert untestable
    for c in untestable:
        assert len(c.why_not) > 20, c.id
    f1 = reg["s002.abstract.f1_figures"]
    assert not f1.testable and "Llama 3.2-1B" in f1.why_not and "embedded" in f1.stand_in
    assert reg["s002.abstract.nf4_matches_fp16"].status == "stand-in"
    assert reg["s000.irqlora.mmlu"].status == "untestable"
    assert all(c.why_not == "" for c in reg.values() if c.testable)


def test_tally_separates_seed_and_toolkit():
    reg = registry()
    t = reg.tally()
    assert t["seed"]["total"] + t["toolkit"]["total"] == len(reg)
    assert t["toolkit"]["by_source"] == {"DESIGN.md": t["toolkit"]["total"]}
    assert sum(t["seed"]["by_kind"].values()) == t["seed"]["total"]


# -- bad entries are rejected, naming the claim ---------------------------------------------------

BAD = [
    ("no quote", dict(quote=""), "needs a source quote"),
    ("whitespace quote", dict(quote="   \n "), "needs a source quote"),
    ("no test", dict(test=None), "needs a test"),
    ("unknown kind", dict(kind="lower_bound"), "unknown kind 'lower_bound'"),
    ("scaling margin negative", dict(test=_test(margin=-0.1)), "margin of the wrong sign"),
    ("scaling margin zero", dict(test=_test(margin=0.0)), "margin of the wrong sign"),
    (
        "no_effect margin negative",
        dict(kind="no_effect", test=_test(margin=-0.05)),
        "margin of the wrong sign",
    ),
    (
        "upper_bound margin negative",
        dict(kind="upper_bound", test=_test(margin=-0.1)),
        "margin of the wrong sign",
    ),
    (
        "comparison margin negative",
        dict(kind="comparison", test=_test(margin=-1.0, direction="greater")),
        "margin of the wrong sign",
    ),
    ("nan margin", dict(test=_test(margin=float("nan"))), "finite number"),
    ("string margin", dict(test=_test(margin="0.1")), "finite number"),
    ("comparison without direction", dict(kind="comparison", test=_test(margin=0.0)), "direction"),
    (
        "direction on a no_effect",
        dict(kind="no_effect", test=_test(direction="less")),
        "comparisons only",
    ),
    ("scaling law predicts nothing", dict(test=_test(predicted=None)), "needs test.predicted"),
    ("alpha out of range", dict(test=_test(alpha=0.7)), "alpha"),
    ("empty statistic", dict(test=_test(statistic="")), "statistic"),
    ("untestable without why", dict(testable=False), "must say why"),
    ("why_not on a testable claim", dict(why_not="because"), "marked testable"),
    ("unknown source", dict(source="005_unknown.txt"), "source must be one of"),
    ("id prefix and source disagree", dict(source=SEED_FILES["s002"]), "needs source"),
    ("toolkit origin on a seed id", dict(origin="toolkit"), "does not match the id prefix"),
    ("unknown origin", dict(origin="paper"), "origin must be one of"),
    (
        "unknown scale",
        dict(convention=Convention(scale="alpha", step="Δ", range="R")),
        "convention.scale",
    ),
    ("bad by_scale", dict(test=_test(by_scale=(("alpha", 1.0),))), "by_scale"),
    ("empty quantity", dict(quantity=""), "quantity"),
]


@pytest.mark.parametrize("what,over,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_entry_rejected_with_a_clear_error(what, over, msg):
    with pytest.raises(RegistryError) as err:
        Claim(**_good(**over))
    assert msg in str(err.value)
    assert "s001.test.entry" in str(err.value)  # names the claim


def test_bad_id_and_duplicate_id_rejected():
    with pytest.raises(RegistryError, match="claim id 'Thm 3.1'"):
        Claim(**_good(id="Thm 3.1"))
    a = Claim(**_good())
    with pytest.raises(RegistryError, match="duplicate claim id 's001.test.entry'"):
        build_registry([a, dataclasses.replace(a, quantity="another quantity here")])
    with pytest.raises(RegistryError, match="not a Claim"):
        build_registry([a, {"id": "s001.x"}])
    assert len(build_registry([a])) == 1


def test_claims_are_frozen():
    c = registry()["s001.thm3_1.bound"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.kind = "identity"  # type: ignore[misc]


def test_import_does_no_heavy_work():
    code = (
        "import sys; import quantbounds.verdicts.registry, quantbounds.verdicts.registry_check, "
        "quantbounds.cli.claims; "
        "mods = ('jax', 'torch', 'quantbounds.verdicts._claims_table'); "
        "bad = [m for m in mods if m in sys.modules]; "
        "assert not bad, bad; "
        "quantbounds.verdicts.registry.registry(); "
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- verdicts against the registry -------------------------------------------------------------


def test_check_verdicts_accepts_wired_verdicts_and_names_each_problem():
    good = {
        "claim": "R > 0.9",
        "verdict": "fails",
        "claim_id": "s003.validation.correlation",
        "kind": "comparison",
    }
    check_verdicts([good])
    assert verdict_problems([good]) == []
    cases = [
        ({"claim": "no id here", "verdict": "holds"}, "no claim_id"),
        ({"claim": "x", "claim_id": "s001.worked_example", "kind": "rule"}, "not in the registry"),
        (
            {"claim": "x", "claim_id": "s001.thm3_1.gen_term", "kind": "scaling_law"},
            "disagrees with claim 's001.thm3_1.gen_term', which is 'upper_bound'",
        ),
        ({"claim": "x", "claim_id": "s001.thm3_1.gen_term"}, "no kind"),
        ({"claim": "x", "claim_id": "s001.thm3_1.gen_term", "kind": "bound"}, "unknown kind"),
    ]
    for bad, msg in cases:
        with pytest.raises(VerdictClaimError) as err:
            check_verdicts([good, bad], where="results/x.json")
        assert (
            msg in str(err.value)
            and "results/x.json" in str(err.value)
            and "verdict 1" in str(err.value)
        )
    assert len(verdict_problems([c for c, _ in cases])) == len(cases)


def test_legacy_mapping_targets_exist_and_wire():
    reg = registry()
    for _, cid, _ in LEGACY_MAP:
        assert cid == REMOVE or cid in reg, cid
    legacy = [
        (
            "predictions and results correlate with R > 0.9 (quantization term r·2^(−2b))",
            "s003.validation.correlation",
        ),
        ("Thm 3.1 generalization term: exponent in r = +½", "s001.thm3_1.gen_term"),
        ("E‖ε_BA‖² ∝ r^1 under LoRA scale 'one' (gaussian factors)", "s001.thm3_1.rank_mechanism"),
        (
            "E‖ε_BA‖² ∝ r^-1 under LoRA scale 'alpha_r' (gaussian factors)",
            "toolkit.scale_conventions",
        ),
        ("Thm 3.2 worked example: b* ≈ 5.7 for r = 16, N = 1000", REMOVE),
        ("8-bit gives < 5% perplexity degradation for 1 ≤ r ≤ 8", "s003.guideline.r_le_8"),
    ]
    for text, cid in legacy:
        assert suggest_claim_id({"claim": text})[0] == cid, text
    assert suggest_claim_id("a claim nobody made") is None
    wired = wire_legacy([{"claim": t, "verdict": "holds"} for t, _ in legacy])
    assert len(wired) == len(legacy) - 1  # the 5.7 verdict is dropped
    check_verdicts(wired)


# -- the `quantbounds claims` command ------------------------------------------------------------


def _results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "calibration.json").write_text(
        json.dumps(
            {
                "verdicts": [
                    {
                        "claim": "R > 0.9 in the runs' convention",
                        "verdict": "fails",
                        "predicted": 0.9,
                        "measured": 0.86,
                        "ci": [0.8, 0.9],
                        "conditions": "",
                        "claim_id": "s003.validation.correlation",
                        "kind": "comparison",
                    },
                    {
                        "claim": "legacy verdict without an id",
                        "verdict": "holds",
                        "predicted": 1,
                        "measured": 1,
                        "ci": None,
                        "conditions": "",
                    },
                    {"claim": "stale", "verdict": "holds", "claim_id": "s001.gone", "kind": "rule"},
                ]
            }
        )
    )
    (d / "notes.json").write_text(json.dumps({"no": "verdicts here"}))
    return d


def test_claims_command_lists_registry_with_latest_verdict(tmp_path, capsys):
    from quantbounds.cli.claims import main

    d = _results(tmp_path)
    assert main(["--results", str(d)]) == 0
    out = capsys.readouterr().out
    assert "s003.validation.correlation" in out and "fails" in out
    assert "no verdict" in out  # claims nobody judged yet
    assert "seed claims:" in out and "toolkit claims:" in out
    assert "s001.gone" in out and "not in the registry" in out  # warned, not listed
    assert "1 of 3 verdicts carry no claim_id" in out

    assert main(["--results", str(d), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in data["claims"]}
    assert len(rows) == len(registry())
    assert rows["s003.validation.correlation"]["latest"]["summary"] == "fails"
    assert rows["s003.validation.correlation"]["latest"]["file"] == "calibration.json"
    assert rows["s001.thm3_1.bound"]["latest"] is None
    assert data["tally"]["seed"]["findings"]["fails"] == 1
    assert data["files"] == ["calibration.json"]

    assert main(["--results", str(d), "--json", "--origin", "toolkit", "--kind", "identity"]) == 0
    rows = json.loads(capsys.readouterr().out)["claims"]
    assert rows and all(r["origin"] == "toolkit" and r["kind"] == "identity" for r in rows)


def test_claims_command_takes_the_latest_file(tmp_path, capsys):
    import os

    from quantbounds.cli.claims import main

    d = tmp_path / "results"
    d.mkdir()
    for name, verdict, t in (("old.json", "holds", 1_000), ("new.json", "conditional", 2_000)):
        p = d / name
        p.write_text(
            json.dumps(
                {
                    "verdicts": [
                        {
                            "claim": "c",
                            "verdict": verdict,
                            "claim_id": "s001.thm3_3.bound",
                            "kind": "upper_bound",
                        }
                    ]
                }
            )
        )
        os.utime(p, (t, t))
    assert main(["--results", str(d), "--json"]) == 0
    row = next(
        r for r in json.loads(capsys.readouterr().out)["claims"] if r["id"] == "s001.thm3_3.bound"
    )
    assert row["latest"]["file"] == "new.json" and row["latest"]["summary"] == "conditional"
    assert row["latest"]["earlier"] == [{"file": "old.json", "summary": "holds"}]


def test_claims_command_missing_folder(tmp_path, capsys):
    from quantbounds.cli.claims import main

    assert main(["--results", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_claims_is_a_registered_subcommand(tmp_path, capsys):
    if "claims" not in {ep.name for ep in entry_points(group="quantbounds.commands")}:
        pytest.skip("package not installed with the claims entry point (pip install -e .)")
    from quantbounds.cli.main import main

    assert main(["claims", "--results", str(_results(tmp_path)), "--origin", "seed"]) == 0
    out = capsys.readouterr().out
    assert "s003.validation.correlation" in out and "toolkit.moments.fro" not in out


def test_registry_module_constants_match_the_seed_files():
    assert set(SEED_FILES) == {"s000", "s001", "s002", "s003"}
    assert regmod.TOOLKIT_SOURCE == "DESIGN.md"
