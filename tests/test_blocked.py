"""The seed-blocked model (analysis/blocked.py): a pooled error where the variants scatter alike,
the pair's own paired t-test where they do not, and the test named beside every comparison."""

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import blocked, verdicts


def seeds_by_variants(spreads, shifts, seeds=6, seed=0):
    """Seeds x variants with a shared seed effect, a per-variant shift and per-variant noise."""
    rng = np.random.default_rng(seed)
    block = rng.normal(0, 0.05, seeds)
    return pd.DataFrame({f"m{i}": 3.0 + shift + block + rng.normal(0, sd, seeds)
                         for i, (sd, shift) in enumerate(zip(spreads, shifts))}, index=pd.Index(range(seeds), name="seed"))


def runs_of(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename_axis(columns="variant").stack().rename("val_loss").reset_index()


def test_pooled_fit_is_the_two_way_anova():
    """Estimate = the paired mean, error from the two-way residual mean square on (V-1)(S-1) df."""
    table = seeds_by_variants([0.01] * 5, [0, 0.01, 0.02, -0.01, 0.0])
    model = blocked.fit(table, log=False)
    assert model.pooled and model.dof == 4 * 5
    centred = table.sub(table.mean(axis=1), axis=0).sub(table.mean(axis=0), axis=1) + table.to_numpy().mean()
    mse = float((centred ** 2).to_numpy().sum()) / model.dof
    estimate, se = model.contrast("m2", "m0")
    assert estimate == pytest.approx(float((table["m2"] - table["m0"]).mean()), abs=1e-12)
    assert se == pytest.approx(math.sqrt(2 * mse / len(table)), rel=1e-9)
    assert "seed-blocked model over 5 variants, df 20" in model.test()


def test_two_variants_are_the_paired_t_test():
    table = seeds_by_variants([0.01, 0.01], [0, 0.02])
    out = verdicts.equivalence_table(runs_of(table), {"val_loss": 0.02}, {"m1": "m0"})
    d = table["m1"] - table["m0"]
    assert out.loc[0, "test"] == blocked.PAIRED
    assert out.loc[0, "p_diff"] == pytest.approx(verdicts.tost(d, 0.02)["p_diff"])
    assert out.loc[0, "dof"] == len(table) - 1


def test_pooling_buys_degrees_of_freedom():
    """At 3 seeds the pair alone has 2 df; with 8 alike variants the same difference is judged on 14."""
    table = seeds_by_variants([0.01] * 8, [0.0, 0.03] + [0.0] * 6, seeds=3, seed=3)
    bases = {c: "m0" for c in table.columns if c != "m0"}
    out = verdicts.equivalence_table(runs_of(table), {"val_loss": 0.02}, bases).set_index("variant")
    assert out.loc["m1", "dof"] == 14 and out.loc["m1", "test"].startswith("seed-blocked")
    alone = verdicts.tost(table["m1"] - table["m0"], 0.02)
    assert out.loc["m1", "high95"] - out.loc["m1", "low95"] < alone["high95"] - alone["low95"]


def test_unequal_spreads_fall_back_to_the_pair():
    """One variant scattering 30x the others: Brown-Forsythe rejects and each pair uses its own seeds."""
    table = seeds_by_variants([0.002, 0.002, 0.002, 0.002, 0.06, 0.06], [0] * 6, seeds=8, seed=1)
    model = blocked.fit(table, log=False)
    assert model.homogeneity_p < 0.05 and not model.pooled
    bases = {c: "m0" for c in table.columns if c != "m0"}
    out = verdicts.equivalence_table(runs_of(table), {"val_loss": 0.02}, bases).set_index("variant")
    assert out["test"].str.startswith("paired t (variances differ: Brown-Forsythe p = ").all()
    d = table["m4"] - table["m0"]
    assert out.loc["m4", "dof"] == len(table) - 1
    assert out.loc["m4", "p_tost"] == pytest.approx(verdicts.tost(d, 0.02)["p_tost"])


def test_missing_cells_stay_out():
    """A seed one variant lacks drops that cell only; the pair still counts its common seeds."""
    table = seeds_by_variants([0.01] * 4, [0, 0.01, 0, 0], seeds=5)
    table.loc[4, "m1"] = np.nan
    out = verdicts.equivalence_table(runs_of(table.stack().unstack()), {"val_loss": 0.02},
                                     {"m1": "m0", "m2": "m0", "m3": "m0"}).set_index("variant")
    assert out.loc["m1", "n"] == 4 and out.loc["m2", "n"] == 5
    assert out.loc["m1", "dof"] == 5 * 4 - 1 - (1 + 3 + 4)  # 19 cells less the 8 parameters


def distances(effects_a, effects_b, seeds=5, noise=0.005, seed=0):
    """Seeds x (method, family): per method a level on family a and on family b, a shared seed effect."""
    rng = np.random.default_rng(seed)
    block = rng.normal(0, 0.02, seeds)
    columns = {}
    for family, effects in (("a", effects_a), ("b", effects_b)):
        for i, level in enumerate(effects):
            columns[(f"m{i}", family)] = level + block + rng.normal(0, noise, seeds)
    return pd.DataFrame(columns, index=pd.Index(range(seeds), name="seed")).rename_axis(columns=["method", "family"])


def test_interaction_is_found_where_a_method_reverses_and_not_where_all_shift_alike():
    alike = blocked.interaction(distances([0.0, -0.05, 0.03, -0.02], [0.01, -0.04, 0.04, -0.01]))
    assert alike["p"] > 0.05 and alike["df_num"] == 3 and alike["df_den"] == 4 * 2 * 5 - 1 - 3 - 1 - 4 - 3
    reversed_ = blocked.interaction(distances([0.0, -0.05, 0.03, -0.02], [0.0, 0.05, 0.03, -0.02]))
    assert reversed_["p"] < 1e-6


def test_interaction_needs_two_families():
    table = distances([0.0, -0.05], [0.0, -0.05]).loc[:, (slice(None), "a")]
    assert math.isnan(blocked.interaction(table)["p"])
