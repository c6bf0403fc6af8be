"""Verdicts (issue 20): TOST equivalence against scipy's one-sided tests, and the distance to a
front on synthetic runs where the answer is known."""

import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import tables
from harness.analysis import front, stats, verdicts
from harness.cli import main

D = np.array([0.004, -0.002, 0.006, 0.001, -0.003, 0.002])  # paired differences over 6 seeds


def test_tost_matches_two_one_sided_scipy_tests():
    margin = 0.01
    out = verdicts.tost(D, margin)
    p_lower = sps.ttest_1samp(D, -margin, alternative="greater").pvalue
    p_upper = sps.ttest_1samp(D, margin, alternative="less").pvalue
    assert out["p_tost"] == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    low90, high90 = sps.t.interval(0.90, len(D) - 1, loc=D.mean(), scale=sps.sem(D))
    assert (out["low90"], out["high90"]) == pytest.approx((low90, high90))
    assert out["p_tost"] < 0.05 and out["verdict"] == "equivalent within ±0.01"  # the two agree


@pytest.mark.parametrize("shift, margin, verdict", [
    (0.0, 0.01, "equivalent within ±0.01"),
    (0.05, 0.01, "not equivalent"),  # the interval lies beyond the margin (and so is different too)
    (0.01, 0.012, "different"),  # different from 0, but the interval reaches neither inside nor beyond the margin
    (0.0, 0.002, "inconclusive"),  # too noisy for so tight a margin, and no difference either
])
def test_tost_verdicts(shift, margin, verdict):
    out = verdicts.tost(D + shift, margin)
    assert out["verdict"].startswith(verdict) if verdict == "inconclusive" else out["verdict"] == verdict
    if verdict == "inconclusive":
        assert math.isinf(out["seeds_to_equivalence"]) or out["seeds_to_equivalence"] > len(D)


def test_seeds_to_equivalence_is_the_first_n_whose_tost_power_reaches_80_percent():
    sd, diff, margin = 0.004, 0.001, 0.005
    n = int(stats.seeds_to_equivalence(diff, sd, margin))
    assert stats.tost_power(n, diff, sd, margin) >= 0.8 > stats.tost_power(n - 1, diff, sd, margin)
    assert math.isinf(stats.seeds_to_equivalence(0.006, sd, margin))  # outside the margin: never


def test_a_difference_inside_the_margin_and_resolved_says_both():
    d = np.array([0.030, 0.034, 0.031, 0.033, 0.032])  # clearly not 0, clearly inside +/- 0.05
    assert verdicts.tost(d, 0.05)["verdict"] == "equivalent within ±0.05 and different"


def synthetic_front(offsets: dict[str, float], maxvio: dict[str, float], seeds=range(5)) -> pd.DataFrame:
    """A family on val_loss = 2.0 - 0.1 log(maxvio) (its points at maxvio 0.1, 1, 10), plus methods
    placed `offsets` above it at `maxvio`, with seed noise shared by every run of a seed."""
    rows = []
    rng = np.random.default_rng(0)
    for seed in seeds:
        luck = rng.normal(0, 0.02)
        for v in (0.1, 1.0, 10.0):
            rows.append({"variant": f"front {v}", "seed": seed, "front": True, "maxvio_global": v,
                         "router.aux_alpha": 1 / v, "val_loss": 2.0 - 0.1 * math.log(v) + luck})
        for name, offset in offsets.items():
            vio = maxvio[name] if not callable(maxvio[name]) else maxvio[name](seed)
            rows.append({"variant": name, "seed": seed, "front": False, "maxvio_global": vio, "router.aux_alpha": 0.0,
                         "val_loss": 2.0 - 0.1 * math.log(vio) + luck + (offset(seed) if callable(offset) else offset)
                         + rng.normal(0, 0.002)})
    return pd.DataFrame(rows)


def judge(runs: pd.DataFrame) -> pd.DataFrame:
    return front.front_verdicts(front.front_distances(runs, runs["front"])).set_index("variant")


def test_a_point_below_on_and_above_a_known_front():
    runs = synthetic_front({"below": -0.03, "on": 0.0, "above": 0.03, "far": 0.0, "edge": -0.03},
                           {"below": 0.3, "on": 3.0, "above": 0.5, "far": 50.0,
                            "edge": lambda seed: 0.05 if seed < 3 else 0.2})  # 3 seeds beyond, 2 inside
    table = judge(runs)
    assert table.loc["below", "verdict"].startswith("beats the front, d = -0.0")
    assert table.loc["above", "verdict"].startswith("worse than the front, d = +0.0")
    assert table.loc["on", "verdict"].startswith("not distinguishable from the front, d = ")  # never "on the front"
    assert table.loc["below", "diff"] == pytest.approx(-0.03, abs=0.003)  # the seed luck cancels
    # less balanced than the family's least balanced point, on the line's extension: lower in loss than that
    # point, but its recorded distance (against the end point) is a lower bound, so it cannot show "better"
    assert table.loc["far", "position"] == "5 past"
    assert table.loc["far", "verdict"].startswith("not shown better than the front (5 seed(s) past")
    # more balanced than the family ever got, 0.03 below its line: compared with the most balanced member
    # (the line is not extrapolated), whose loss is lower, so the bound cannot show "better"
    assert table.loc["edge", "position"] == "2 inside, 3 beyond"
    assert table.loc["edge", "verdict"].startswith("not shown worse than the front (3 seed(s) beyond")


def test_the_mixed_case_below_on_one_seed_and_beyond_on_two_beats_the_front():
    """Issue 32's case: below the front on one seed; more balanced and lower in loss than the front's
    most balanced point on the other two. Every seed says better: one test over all three."""
    rows = []
    for seed, luck in enumerate((0.0, 0.01, -0.01)):
        for alpha, vio, loss in ((1e-3, 2.5, 1.40), (1e-2, 0.9, 1.42), (0.1, 0.215, 1.46)):
            rows.append({"variant": f"aux alpha={alpha}", "seed": seed, "front": True, "router.aux_alpha": alpha,
                         "maxvio_global": vio, "val_loss": loss + luck})
        vio = 0.3 if seed == 0 else 0.11  # seed 0 inside the front's range, seeds 1 and 2 beyond it
        rows.append({"variant": "loss_free", "seed": seed, "front": False, "router.aux_alpha": 0.0,
                     "maxvio_global": vio, "val_loss": 1.40 + luck + [0.01, 0.0, 0.005][seed]})
    row = judge(pd.DataFrame(rows)).loc["loss_free"]
    assert row["position"] == "1 inside, 2 beyond" and row["seeds_better"] == 3
    assert row["verdict"].startswith("beats the front, d = ")
    assert row["p"] < 0.05 and row["high95"] < 0


def test_a_seed_past_the_front_cannot_show_better():
    """Lower in loss than the least balanced member, but less balanced: the front may fall below it
    there, so the seed's distance is a lower bound; the verdict cannot be 'beats'."""
    line = 0.1 * math.log(50.0 / 10.0)
    runs = synthetic_front({"cheap": -line - 0.05, "worse": line + 0.05}, {"cheap": 50.0, "worse": 50.0}, seeds=(0, 1, 2))
    table = judge(runs)
    assert table.loc["cheap", "diff"] < 0 and pd.isna(table.loc["cheap", "p"])
    assert table.loc["cheap", "verdict"].startswith("not shown better than the front (3 seed(s) past")
    assert table.loc["worse", "verdict"].startswith("dominated by the front, d = +")


def test_seeds_on_both_sides_of_the_front_are_mixed():
    runs = synthetic_front({"split": 0.0}, {"split": lambda seed: [0.05, 0.3, 40.0, 0.5, 0.02][seed]})
    verdict = judge(runs).loc["split", "verdict"]
    assert verdict.startswith("mixed: 2 seed(s) beyond the front's most balanced point, 1 past its least balanced, "
                              "d = ")
    two = judge(synthetic_front({"below": -0.03}, {"below": 0.3}, seeds=range(2))).loc["below", "verdict"]
    assert "too few" not in two and ("beats the front" in two or "not distinguishable" in two)


def test_the_held_out_case_beyond_the_familys_balance_is_judged_on_every_seed():
    """The family never reaches the method's balance; the method is lower in loss than the family's
    most balanced member on 2 of 3 seeds: a bound that supports 'better', tested over all 3 seeds."""
    rows = []
    for seed, (luck, mine) in enumerate([(0.00, -0.02), (0.01, -0.015), (-0.01, 0.004)]):
        for alpha, vio, loss in ((1e-3, 2.5, 1.40), (1e-2, 0.9, 1.42), (0.1, 0.215, 1.46), (0.3, 0.26, 1.48)):
            rows.append({"variant": f"aux alpha={alpha}", "seed": seed, "front": True, "router.aux_alpha": alpha,
                         "maxvio_global": vio, "val_loss": loss + luck})
        rows.append({"variant": "loss_free", "seed": seed, "front": False, "router.aux_alpha": 0.0,
                     "maxvio_global": 0.11, "val_loss": 1.46 + luck + mine})
    runs = pd.DataFrame(rows)
    row = judge(runs).loc["loss_free"]
    assert row["position"] == "3 beyond" and row["seeds_better"] == 2 and row["diff"] < 0
    assert row["verdict"].startswith("not distinguishable from the front, d = -0.010 [")  # 3 seeds cannot tell
    # alpha 0.3 balanced worse and lost more than alpha 0.1: dominated on every seed, not used
    reach = front.family_reach(runs[runs["front"]], "aux")
    assert reach.startswith("aux: never balanced below MaxVio_global 0.215 (at aux_alpha = 0.1, the mean of 3 seeds)")
    assert "dominated (off the Pareto front) aux_alpha = 0.3 on 3 of 3 seeds" in reach


def test_a_dominated_member_is_not_used_by_the_front():
    points = pd.DataFrame({"maxvio_global": [0.1, 0.3, 1.0, 10.0], "val_loss": [3.0, 3.5, 2.0, 1.5]})
    assert list(front.frontier(points)["maxvio_global"]) == [0.1, 1.0, 10.0]  # 0.3 lost more than 0.1
    assert front.place(front.frontier(points), 0.3, 2.5) == ("inside", pytest.approx(3.0 - math.log(3) / math.log(10)))
    assert front.place(front.frontier(points), math.sqrt(0.1), 2.5)[1] == pytest.approx(2.5)  # half-way in log
    assert front.place(front.frontier(points), 0.05, 2.9) == ("beyond", 3.0)
    assert front.place(front.frontier(points), 20.0, 1.6) == ("past", 1.5)
    assert front.place(front.frontier(points), 0.0, 2.9)[0] == "beyond"  # MaxVio 0 is more balanced than any


def test_a_method_less_balanced_and_higher_in_loss_is_dominated():
    runs = synthetic_front({"worse": 0.5}, {"worse": 40.0})
    assert judge(runs).loc["worse", "verdict"].startswith("dominated by the front, d = +")


def test_primary_comparisons_alone_form_the_holm_set():
    p = np.array([0.01, 0.04, 0.03, np.nan])
    assert list(stats.holm(p)[:3]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01, then max(2 x 0.03, .) ...
    assert np.isnan(stats.holm(p)[3])
    rng = np.random.default_rng(5)
    rows = []  # ten methods against a baseline that differ by nothing; one borderline at random
    for seed in range(4):
        rows.append({"variant": "base", "seed": seed, "val_loss": 2.0 + 0.01 * seed})
        for i in range(10):
            rows.append({"variant": f"m{i}", "seed": seed, "val_loss": 2.0 + 0.01 * seed + rng.normal(0, 0.01)})
    runs = pd.DataFrame(rows).assign(equivalence_margin='{"val_loss": 0.001}', status="ok")
    bases = {f"m{i}": "base" for i in range(10)}
    entries = [f"m{i} vs base" for i in range(10)]
    raw = verdicts.decide(verdicts.equivalence_table(runs, {"val_loss": 0.001}, bases), "none", entries, "base")
    held = verdicts.decide(verdicts.equivalence_table(runs, {"val_loss": 0.001}, bases), "holm", entries, "base")
    assert (held["p_diff_adjusted"] >= raw["p_diff_adjusted"]).all()
    assert (held["verdict"] == "different").sum() <= (raw["verdict"] == "different").sum()
    assert set(held["correction"]) == {"holm over 30 primary test(s)"} and set(raw["correction"]) == {"none"}
    # two primary comparisons: Holm over their tests only; the other eight are exploratory, unadjusted
    two = verdicts.decide(verdicts.equivalence_table(runs, {"val_loss": 0.001}, bases), "holm", entries[:2], "base")
    primary = two["role"] == "primary"
    assert primary.sum() == 2 and set(two.loc[~primary, "correction"]) == {"none (exploratory)"}
    assert (two.loc[~primary, "p_diff_adjusted"] == two.loc[~primary, "p_diff"]).all()
    pair = two.loc[primary, ["p_tost", "p_diff", "p_noneq"]].to_numpy().ravel()
    assert two.loc[primary, ["p_tost_adjusted", "p_diff_adjusted", "p_noneq_adjusted"]].to_numpy().ravel() == \
        pytest.approx(stats.holm(pair))
    # no primary at all: every verdict is exploratory (not one giant family)
    none = verdicts.decide(verdicts.equivalence_table(runs, {"val_loss": 0.001}, bases), "holm")
    assert set(none["role"]) == {"exploratory"} and (none["p_diff_adjusted"] == none["p_diff"]).all()


def test_an_interval_beyond_the_margin_is_not_equivalent():
    """aux alpha 1 against Loss-Free on the methods page: +0.135, seven times the 0.02 margin."""
    d = np.array([0.11, 0.14, 0.155])
    out = verdicts.tost(d, 0.02)
    assert out["low95"] > 0.02 and out["verdict"] == "not equivalent"
    noisy = verdicts.tost(np.array([0.01, -0.02, 0.03]), 0.02)
    assert noisy["verdict"].startswith("inconclusive, d = +0.00667 [")


def test_seeds_for_power_agree_with_a_simulation():
    """The seeds a design would need (power 0.8) reach about 80 % in simulation, and one fewer does not
    (20,000 simulated seed sets per n, both tests written out independently of the harness's code)."""
    rng = np.random.default_rng(0)
    diff, sd, margin = 0.01, 0.012, 0.02

    def power(k: int, truth: float, kind: str) -> float:
        d = rng.normal(truth, sd, size=(20000, int(k)))
        mean, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(k)
        if kind == "difference":
            return float((2 * sps.t.sf(np.abs(mean) / se, k - 1) < 0.05).mean())
        p_tost = np.maximum(sps.t.sf((mean + margin) / se, k - 1), sps.t.cdf((mean - margin) / se, k - 1))
        return float((p_tost < 0.05).mean())

    for kind, n, truth in (("difference", stats.seeds_needed(diff, sd), diff),
                           ("equivalence", stats.seeds_to_equivalence(0.0, sd, margin), 0.0)):
        assert power(n, truth, kind) >= 0.78, (kind, n)
        assert n == 2 or power(n - 1, truth, kind) < 0.8, (kind, n)


def test_maxvio_is_compared_by_ratios_and_its_margin_is_relative():
    rows = []
    for seed in range(4):
        rows += [{"variant": "base", "seed": seed, "maxvio_global": 0.2 * (1 + 0.5 * seed)},
                 {"variant": "half", "seed": seed, "maxvio_global": 0.1 * (1 + 0.5 * seed) * (1.01 if seed % 2 else 0.99)}]
    table = verdicts.equivalence_table(pd.DataFrame(rows), {"maxvio_global": 0.1}, {"half": "base"})
    row = table.iloc[0]
    assert row["scale"] == "log" and math.exp(row["diff"]) == pytest.approx(0.5, rel=0.02)
    assert row["verdict"] == "not equivalent"  # a ratio of 0.5 is far outside x1.1


def test_a_suite_with_a_front_and_a_margin_prints_verdicts_in_its_report(make_suite, tmp_path, capsys):
    from harness.cli import main

    extra = '''
        equivalence_margin = { val_loss = 0.05 }
        front = { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.001, 0.1, 1.0] }
    '''
    suite = make_suite([{"router": "sigmoid_topk"}, {"router": "loss_free", "router.bias_rate": 0.01}],
                       seeds=(0, 1, 2))
    suite.write_text(textwrap.dedent(extra) + suite.read_text())  # NOTE: top-level keys before the tables
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["report", str(tmp_path / "tiny")]) == 0
    table = pd.read_parquet(tmp_path / "tiny" / "verdicts.parquet")
    assert set(table["kind"]) == {"front", "equivalence"}
    assert set(table.loc[table["kind"] == "front", "variant"]) == {"sigmoid_topk", "loss_free"}
    assert table.loc[table["kind"] == "equivalence", "metric"].eq("val_loss").all()
    assert table["verdict"].str.match(r"beats the front|worse than|dominated|mixed|not distinguishable|not shown|"
                                      r"equivalent|not equivalent|different|inconclusive|withheld").all()
    assert set(table["role"]) == {"exploratory"}  # no primary declared
    report = (tmp_path / "tiny" / "report.md").read_text()
    assert "## Verdicts" in report and "![front](plots/front.png)" in report


@pytest.mark.parametrize("extra, message", [
    ('front = { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.1] }', r"front = .* must be"),
    ("equivalence_margin = { val_loss = -1 }", r"equivalence_margin = .* must map metric names to margins > 0"),
    ("equivalence_margin = { nope = 0.1 }", r"equivalence_margin names unknown metric\(s\) \['nope'\]"),
])
def test_bad_verdict_keys_exit_2(make_suite, tmp_path, capsys, extra, message):
    import re

    from harness.cli import main

    suite = make_suite([{"router": "loss_free"}])
    suite.write_text(extra + "\n" + suite.read_text())
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_suite_with_several_named_fronts_judges_against_each(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "loss_free", "router.bias_rate": 0.01}], seeds=(0, 1))
    text = suite.read_text().replace("[base]", textwrap.dedent("""\
        front = [
          { name = "aux micro", router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.001, 1.0] },
          { name = "aux seq", router = "sigmoid_topk_aux", "router.aux_scope" = "sequence", key = "router.aux_alpha", values = [0.001, 1.0] },
        ]
        [base]"""), 1)
    suite.write_text(text)
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 0
    runs = tables.read(tmp_path / "tiny")
    seq = runs[runs["front_family"] == "aux seq"]
    assert set(seq["variant"]) == {"aux seq aux_alpha=0.001", "aux seq aux_alpha=1"}
    assert set(seq["router.aux_scope"]) == {"sequence"}  # the family's own setting
    assert set(runs[runs["front_family"] == "aux micro"]["router.aux_scope"]) == {"micro_batch"}
    assert main(["report", str(tmp_path / "tiny")]) == 0
    table = pd.read_parquet(tmp_path / "tiny" / "verdicts.parquet")
    front = table[table["kind"] == "front"]
    assert set(front["against"]) == {"aux micro", "aux seq"} and set(front["variant"]) == {"loss_free"}
    report = (tmp_path / "tiny" / "report.md").read_text()
    assert "the front 'aux seq'" in report and "the front 'aux micro'" in report


def test_several_fronts_need_distinct_names(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "loss_free"}])
    suite.write_text(suite.read_text().replace("[base]", textwrap.dedent("""\
        front = [{ router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.001, 1.0] },
                 { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.01, 1.0] }]
        [base]"""), 1))
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 2
    assert "front lists 2 families: give each its own name" in capsys.readouterr().err


def held_out_runs() -> pd.DataFrame:
    rows = []
    for seed, (luck, mine) in enumerate([(0.00, -0.02), (0.01, -0.015), (-0.01, 0.004)]):
        for alpha, vio, loss in ((1e-3, 2.5, 1.40), (1e-2, 0.9, 1.42), (0.1, 0.215, 1.46), (0.3, 0.26, 1.48)):
            rows.append({"variant": f"aux alpha={alpha}", "seed": seed, "front": True, "front_family": "aux",
                         "router.aux_alpha": alpha, "maxvio_global": vio, "val_loss": loss + luck})
        rows.append({"variant": "loss_free", "seed": seed, "front": False, "front_family": "",
                     "router.aux_alpha": 0.0, "maxvio_global": 0.11, "val_loss": 1.46 + luck + mine})
    return pd.DataFrame(rows)


def test_the_front_figure_draws_a_monotone_front_per_seed_and_hollow_dominated_members():
    from harness.analysis import plots

    runs = held_out_runs()
    fig = plots.front(runs, verdicts.front_rows(runs)[1][0])
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) > 1]
    assert len(lines) == 3  # one front per seed
    for line in lines:  # monotone: more balanced, higher loss
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert (np.diff(x) > 0).all() and (np.diff(y) < 0).all() and 0.26 not in x  # alpha 0.3 is not on it
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none" and len(line.get_xdata())]
    assert sorted(float(line.get_xdata()[0]) for line in hollow) == [0.26] * 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"front (a line per seed)", "dominated member", "loss_free", "seed 0"} <= set(labels)
    fig.canvas.draw()
    assert len([t for t in ax.get_xticklabels() if t.get_text()]) >= 2  # readable ticks on a short log range


def test_a_front_family_on_a_grid_is_recognised_at_every_point(make_suite, tmp_path):
    from harness.suites.suite import load_suite

    suite = make_suite([{"router": "loss_free"}])
    suite.write_text(suite.read_text().replace("[base]", textwrap.dedent("""\
        front = { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [0.001, 1.0] }
        [grid]
        "train.lr" = [0.001, 0.003]
        [base]"""), 1))
    loaded = load_suite(suite)
    family = [r.variant for r in loaded.runs if r.variant.startswith("front")]
    assert len(family) == 4 and set(family) == set(loaded.front)
    assert all(loaded.front_family[v] == "front" for v in family)
