"""Plot functions on generated frames, and `plot` / `report` on a real tiny suite's output."""

import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from harness.analysis import plots
from harness.analysis.report import summary as report, sweep as report_sweep
from harness.cli import main

VARIANTS = ["loss_free", "softmax_topk", "dynamic_k"]


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    runs, steps, loads = [], [], []
    for v, variant in enumerate(VARIANTS):
        for seed in (0, 1):
            run_id = f"{variant}-{seed}"
            k_hist = [0.1, 0.3, 0.4, 0.2] + [0.0] * 5 if variant == "dynamic_k" else [0, 0, 1.0] + [0.0] * 6
            runs.append({"run_id": run_id, "variant": variant, "seed": seed, "status": "ok", "suite": "gen",
                         "val_loss": 2 + 0.1 * v + 0.01 * rng.random(), "maxvio_global": 0.2 + v + 0.05 * rng.random(),
                         "maxvio_batch": 0.3 + v, "mean_k": 2.0, "tokens_per_s": 1000 * (v + 1), "k_hist": k_hist})
            for step in range(10, 110, 10):
                steps.append({"run_id": run_id, "step": step, "tokens": step * 100, "train_loss": 3 - step / 100,
                              "maxvio_batch": (v + 0.5) / step * 10,
                              "val_loss": 3 - step / 60 + 0.1 * v if step % 50 == 0 else np.nan})
            for layer in range(2):
                fracs = rng.dirichlet(np.ones(8))
                loads += [{"run_id": run_id, "step": 100, "layer": layer, "expert": e, "scope": scope, "load": f}
                          for e, f in enumerate(fracs) for scope in ("global", "batch")]
    runs = pd.DataFrame(runs)
    return runs, plots.with_variant(pd.DataFrame(steps), runs), plots.with_variant(pd.DataFrame(loads), runs)


def legend_labels(fig):
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    return {t.get_text() for leg in legends for t in leg.get_texts()}


def test_learning_curves(frames):
    _, steps, _ = frames
    fig = plots.learning_curves(steps)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training tokens" and "validation loss" in ax.get_ylabel()
    assert legend_labels(fig) == set(VARIANTS) and len(ax.get_lines()) >= len(VARIANTS)


def test_maxvio_batch_curves_are_log_scale(frames):
    _, steps, _ = frames
    fig = plots.maxvio_batch_curves(steps)
    assert fig.axes[0].get_yscale() == "log" and "MaxVio_batch" in fig.axes[0].get_ylabel()
    assert legend_labels(fig) == set(VARIANTS)


def test_loss_vs_balance_marks_the_pareto_front(frames):
    runs, _, _ = frames
    fig = plots.loss_vs_balance(runs)
    ax = fig.axes[0]
    assert "MaxVio_global" in ax.get_xlabel() and "validation loss" in ax.get_ylabel()
    assert legend_labels(fig) == set(VARIANTS) | {"Pareto front"}
    front = [line for line in ax.get_lines() if line.get_label() == "Pareto front"][0]
    # loss_free has both the lowest loss and the lowest MaxVio: it alone is the front
    assert len(front.get_xdata()) == 1


def test_pareto_mask_on_hand_points():
    assert plots.pareto_mask([1, 2, 3, 2], [3, 2, 1, 3]).tolist() == [True, True, True, False]


def test_load_heatmaps_one_panel_per_variant(frames):
    _, _, loads = frames
    fig = plots.load_heatmaps(loads)
    titled = [a for a in fig.axes if a.get_visible() and a.get_title() in VARIANTS]
    assert sorted(a.get_title() for a in titled) == sorted(VARIANTS)
    assert all(a.get_xlabel() == "expert" and a.get_ylabel() == "layer" for a in titled)


def test_experts_per_token_only_for_varying_k(frames):
    runs, _, _ = frames
    fig = plots.experts_per_token(runs)
    assert legend_labels(fig) == {"dynamic_k"} and fig.axes[0].get_ylabel() == "fraction of tokens"


def test_throughput_bars_per_variant(frames):
    runs, _, _ = frames
    ax = plots.throughput(runs).axes[0]
    assert "tokens/s" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dynamic_k", "softmax_topk", "loss_free"]


def test_variant_colours_are_consistent_across_figures(frames):
    runs, steps, _ = frames
    palette = plots.variant_palette(runs["variant"])
    curves = plots.learning_curves(steps, palette).axes[0]
    colours = {line.get_label(): line.get_color() for line in curves.get_legend().get_lines()}
    for variant in VARIANTS:
        assert np.allclose(plots.matplotlib.colors.to_rgb(colours[variant]), palette[variant])


def test_k_against_loss_and_specialisation_heatmaps():
    runs = pd.DataFrame([{"run_id": f"{v}-{s}", "variant": v, "seed": s,
                          "k_by_loss_decile": [1 + d / 10 + s / 100 for d in range(10)]}
                         for v in ("dynamic_k", "expert_choice") for s in (0, 1)])
    fig = plots.k_against_loss(runs)
    assert legend_labels(fig) == {"dynamic_k", "expert_choice"} and len(fig.axes[0].lines) >= 2
    loads = pd.DataFrame([{"run_id": f"{v}-{s}", "step": 10, "layer": layer, "expert": e, "scope": f"domain:d{d}",
                           "load": 0.5 if e == d % 4 else 0.5 / 3}
                          for v in ("a", "b") for s in (0, 1) for layer in (0, 1) for d in range(15) for e in range(4)])
    owners = pd.DataFrame([{"run_id": f"{v}-{s}", "variant": v, "seed": s} for v in ("a", "b") for s in (0, 1)])
    fig = plots.specialisation_heatmaps(plots.with_variant(loads, owners), top_domains=12)
    panels = [ax for ax in fig.axes if ax.get_title() in ("a", "b")]
    assert len(panels) == 2 and len(panels[0].get_yticklabels()) == 12  # the 12 largest domains


def test_sweep_plots():
    trials = pd.DataFrame({"trial": range(6), "state": ["COMPLETE"] * 5 + ["FAIL"],
                           "router.bias_rate": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1e-3],
                           "router.bias_update": ["sign", "rms", "sign", "linear", "rms", "sign"],
                           "objective_val_loss": [2.0, 1.9, 1.95, 2.1, 2.2, np.nan],
                           "maxvio_global": [2.0, 1.0, 0.2, 0.3, 0.5, np.nan]})
    fig = plots.sweep_objective(trials, "router.bias_rate", "objective_val_loss", "router.bias_update")
    assert fig.axes[0].get_xscale() == "log" and legend_labels(fig) == {"sign", "rms", "linear"}
    pareto = plots.sweep_pareto(trials, "maxvio_global", "objective_val_loss").axes[0]
    front = [l for l in pareto.get_lines() if l.get_label() == "Pareto front"][0]
    assert sorted(front.get_xdata()) == [0.2, 1.0]  # (2.0, 2.0) is beaten by (1.0, 1.9)
    history = plots.sweep_history(trials, "objective_val_loss").axes[0]
    assert history.get_xlabel() == "trial" and list(history.get_lines()[0].get_ydata()) == [2.0, 1.9, 1.9, 1.9, 1.9]


def test_summary_table_bolds_the_best_and_pairing_separates_what_overlaps():
    seeds = [0, 1, 2] * 3
    runs = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "seed": seeds, "status": "ok",
                         "baseline": "a",
                         "val_loss": [1.0, 1.1, 1.2, 1.05, 1.16, 1.24, 3.0, 3.01, 3.02],
                         "maxvio_global": [0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]})
    table = report.summary_table(runs)
    assert table.loc["a", "val loss"].startswith("**1.100 [")
    assert table.index.tolist() == ["a", "b", "c"] and (table["runs"] == 3).all()
    paired = report.paired_table(runs).set_index(["variant", "metric"])
    # b's seeds move with a's: unpaired intervals overlap, the paired one (+0.05 +- 0.03) excludes 0
    assert not paired.loc[("b", "val loss"), "difference [95 % CI]"].endswith("≈")
    assert paired.loc[("b", "val loss"), "difference [95 % CI]"].startswith("+0.05")


@pytest.fixture
def tiny_suite_folder(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "softmax_topk"}, {"router": "loss_free"}, {"router": "dynamic_k"},
                        {"router": "expert_choice"}], seeds=(0, 1))
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    return tmp_path / "out" / "tiny"


def test_plot_and_report_on_a_real_suite(tiny_suite_folder, capsys):
    assert main(["plot", str(tiny_suite_folder)]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) >= 5
    for path in written:
        image = mpimg.imread(path)
        assert image.shape[0] > 100 and image[..., :3].std() > 0.02, f"{path} looks blank"
    assert main(["report", str(tiny_suite_folder)]) == 0
    page = (tiny_suite_folder / "report.html").read_text()
    markdown = (tiny_suite_folder / "report.md").read_text()
    assert page.count("<img") == len(written) and page.count("data:image/png;base64,") == len(written)
    for path in written:
        stem = path.rsplit("/", 1)[1]
        assert f"plots/{stem}" in markdown
    assert "loss_free" in markdown and re.search(r"\| dynamic_k \| 2 \|", markdown)
    assert {"specialisation.png", "k_vs_loss.png"} <= {p.rsplit("/", 1)[1] for p in written}
    costs = markdown.split("## What imbalance costs")[1].split("\n\n")[1]
    header = costs.splitlines()[0]
    assert "EP4 efficiency" in header and "EP8 efficiency" in header and "drops at c=1.25" in header
    assert "val loss, causal top-k" in header and "k-loss Spearman" in header and "specialisation (NMI)" in header
    softmax_row = next(line for line in costs.splitlines() if line.startswith("| softmax_topk |"))
    assert softmax_row.count("–") == 2  # no causal loss, no k-loss correlation


def test_plot_svg_format(tiny_suite_folder, capsys):
    assert main(["plot", str(tiny_suite_folder), "--format", "svg"]) == 0
    paths = capsys.readouterr().out.split()
    assert paths and all(p.endswith(".svg") and "<svg" in open(p).read() for p in paths)


def test_plot_on_a_folder_without_results(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "runs" in capsys.readouterr().err


def test_controller_dynamics_marks_each_variants_settle_step():
    steps = pd.DataFrame({"variant": ["lf"] * 4 + ["plain"] * 4, "seed": 0, "step": [10, 20, 30, 40] * 2,
                          "maxvio_batch": [2.0, 1.0, 0.3, 0.3, 3.0, 3.0, 3.0, 3.0],
                          "bias_spread": [0.1, 0.2, 0.25, 0.25, None, None, None, None]})
    runs = pd.DataFrame({"variant": ["lf", "plain"], "settle_step": [25.0, None]})
    fig = plots.controller_dynamics(steps, runs)
    left, right = fig.axes[:2]
    assert [line.get_xdata()[0] for line in left.get_lines() if line.get_linestyle() == ":"] == [25.0]
    assert left.get_yscale() == "log" and legend_labels(fig) == {"lf"}  # only runs with a controller


def sweep_with_an_infeasible_best():
    """Trial 1 has the lowest loss but breaks the MaxVio constraint; trial 2 is the best feasible, trial
    3 is within its seed noise, trial 4 is clearly worse."""
    trials = pd.DataFrame({"trial": range(5), "state": "COMPLETE",
                           "label": [f"trial {i}" for i in range(5)],
                           "router.bias_rate": [1e-4, 1e-3, 3e-3, 1e-2, 1e-1],
                           "objective_val_loss": [2.0, 1.8, 1.9, 1.91, 2.3],
                           "maxvio_global": [2.0, 0.9, 0.2, 0.2, 0.1],
                           "constraint_metric": "maxvio_global", "constraint_max": 0.3})
    offsets = {"trial 0": 0.1, "trial 1": -0.1, "trial 2": 0.0, "trial 3": 0.01, "trial 4": 0.4}
    runs = pd.DataFrame([{"variant": label, "seed": seed, "status": "ok",
                          "val_loss": 1.9 + off + luck + (noise if label == "trial 3" else 0.0)}
                         for label, off in offsets.items()
                         for seed, (luck, noise) in enumerate([(0.0, 0.02), (0.03, -0.03), (-0.02, 0.0)])])
    return trials, runs


def test_sweep_history_keeps_the_best_feasible_line_continuous():
    trials, _ = sweep_with_an_infeasible_best()
    history = plots.sweep_history(trials, "objective_val_loss", ("maxvio_global", 0.3)).axes[0]
    best = [line for line in history.get_lines() if line.get_label().startswith("best so far")][0]
    assert list(best.get_ydata())[2:] == [1.9, 1.9, 1.9]  # trial 1 (infeasible) never counts
    assert not np.isnan(best.get_ydata()[2:]).any()


def test_a_sweep_is_compared_with_its_best_feasible_trial_and_names_its_flat_optimum():
    trials, runs = sweep_with_an_infeasible_best()
    best, flat = report_sweep.flat_optimum(runs, trials)
    assert best["label"] == "trial 2" and sorted(flat) == ["trial 2", "trial 3"]
    sentence = report_sweep.flat_sentence(trials, best, flat)
    assert "Best feasible trial: trial 2" in sentence and "router.bias_rate from 0.003 to 0.01" in sentence
    fig = plots.sweep_objective(trials, "router.bias_rate", "objective_val_loss", band=(3e-3, 1e-2))
    shaded = [p for p in fig.axes[0].patches if p.get_label() == "flat optimum"]
    assert len(shaded) == 1
