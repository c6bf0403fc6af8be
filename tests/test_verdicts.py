"""Verdicts (issue 20): TOST equivalence against scipy's one-sided tests, and the distance to a
front on synthetic runs where the answer is known."""

import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import tables
from harness.analysis import verdicts
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
    (0.05, 0.01, "different"),
    (0.0, 0.002, "unresolved"),  # too noisy for so tight a margin, and no difference either
])
def test_tost_verdicts(shift, margin, verdict):
    out = verdicts.tost(D + shift, margin)
    assert out["verdict"] == verdict
    if verdict == "unresolved":
        assert math.isinf(out["seeds_to_equivalence"]) or out["seeds_to_equivalence"] > len(D)


def test_seeds_to_equivalence_is_the_first_n_whose_90_percent_half_width_fits():
    sd, diff, margin = 0.004, 0.001, 0.005
    n = verdicts.seeds_to_equivalence(diff, sd, margin)
    half = lambda k: sps.t.ppf(0.95, k - 1) * sd / math.sqrt(k)  # noqa: E731
    assert half(n) < margin - diff <= half(n - 1)


def synthetic_front(offsets: dict[str, float], maxvio: dict[str, float], seeds=range(5)) -> pd.DataFrame:
    """A family on val_loss = 2.0 - 0.1 log(maxvio) (its points at maxvio 0.1, 1, 10), plus methods
    placed `offsets` above it at `maxvio`, with seed noise shared by every run of a seed."""
    rows = []
    rng = np.random.default_rng(0)
    for seed in seeds:
        luck = rng.normal(0, 0.02)
        for v in (0.1, 1.0, 10.0):
            rows.append({"variant": f"front {v}", "seed": seed, "front": True, "maxvio_global": v,
                         "val_loss": 2.0 - 0.1 * math.log(v) + luck})
        for name, offset in offsets.items():
            vio = maxvio[name] if not callable(maxvio[name]) else maxvio[name](seed)
            rows.append({"variant": name, "seed": seed, "front": False, "maxvio_global": vio,
                         "val_loss": 2.0 - 0.1 * math.log(vio) + luck + offset + rng.normal(0, 0.002)})
    return pd.DataFrame(rows)


def test_a_point_below_on_and_above_a_known_front():
    runs = synthetic_front({"below": -0.03, "on": 0.0, "above": 0.03, "far": 0.0, "edge": -0.03},
                           {"below": 0.3, "on": 3.0, "above": 0.5, "far": 50.0,
                            "edge": lambda seed: 0.05 if seed < 4 else 0.2})  # one seed inside the range
    table = verdicts.front_verdicts(verdicts.front_distances(runs, runs["front"])).set_index("variant")
    assert table.loc["below", "verdict"] == "below the front"
    assert table.loc["above", "verdict"] == "above the front"
    assert table.loc["on", "verdict"] == "on the front"
    assert table.loc["far", "verdict"] == "outside the front's MaxVio range"  # no extrapolation
    assert table.loc["edge", "seeds_inside"] == 1 and table.loc["edge", "verdict"].startswith("outside")
    assert table.loc["below", "distance"] == pytest.approx(-0.03, abs=0.003)  # the seed luck cancels


def test_front_interpolates_in_log_maxvio_between_the_bracketing_pair():
    points = pd.DataFrame({"maxvio_global": [0.1, 1.0, 10.0], "val_loss": [3.0, 2.0, 1.5]})
    assert verdicts.front_loss(points, math.sqrt(0.1)) == pytest.approx(2.5)  # half-way in log
    assert verdicts.front_loss(points, 3.0) == pytest.approx(2.0 - 0.5 * math.log(3) / math.log(10))
    assert math.isnan(verdicts.front_loss(points, 20.0)) and math.isnan(verdicts.front_loss(points, 0.05))


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
    assert table["verdict"].str.match(r"(below|on|above|outside) the front|outside|equivalent|different|"
                                      r"unresolved").all()
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
