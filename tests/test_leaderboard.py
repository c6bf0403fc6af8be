"""The leaderboard (issue 36, item 2): one self-contained HTML page built from every shipped study,
checked against its data like every reference page, with rank intervals from paired seed draws,
a closed and an open division, and a table that sorts and filters in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis import reference
from harness.analysis.leaderboard import leaderboard_rows, rank_intervals
from harness.analysis.reference.leaderboard import RERUNS, STUDIES
from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "results" / "reference" / "leaderboard.html"
ARTIFACTS = ROOT / "results" / "test_artifacts"


def runs_frame(values: dict[str, list[float]], study: str = "s", steps: int = 100, **extra) -> pd.DataFrame:
    """A runs table: one row per (variant, seed) with the given val losses, in one setting."""
    rows = []
    for variant, losses in values.items():
        for seed, loss in enumerate(losses):
            rows.append({"run_id": f"{study}-{variant}-{seed}", "config_id": f"{variant}-{steps}", "variant": variant,
                         "router": variant, "seed": seed, "status": "ok", "suite": study, "baseline": "base",
                         "val_loss": loss, "train_loss": loss + 0.1, "maxvio_global": 0.5, "throughput_ratio": 0.8,
                         "size": "tiny", "model.num_layers": 2, "model.dim": 64, "model.num_experts": 8,
                         "model.top_k": 2, "data_source": "stdlib", "tokenizer_vocab": 256, "train.steps": steps,
                         "train.batch_size": 4, "train.grad_accum": 1, "model.seq_len": 64, "world_size": 1,
                         "git_commit": "abc", "front": False, "front_family": "", **extra})
    return pd.DataFrame(rows)


def test_a_clear_winner_ranks_first_in_every_draw_and_close_rows_are_tied():
    runs = runs_frame({"best": [1.0, 1.1, 1.2], "close": [1.01, 1.09, 1.22], "base": [2.0, 2.1, 2.2]})
    ranks = rank_intervals(runs.assign(row=runs["config_id"]))
    assert ranks.loc["best-100"].tolist() == [1, 1, 2] and ranks.loc["base-100"].tolist() == [3, 3, 3]
    rows = leaderboard_rows({"s": runs}).set_index("method")
    assert rows.loc["close", "tied_with_first"] and not rows.loc["base", "tied_with_first"]
    assert not rows.loc["best", "tied_with_first"]  # the first is not tied with itself
    assert rows.loc["best", "diff_vs_baseline"] == pytest.approx(-1.0) and rows.loc["best", "baseline"] == "base"


def test_runs_two_studies_share_count_once_and_other_settings_go_to_the_open_division():
    one = runs_frame({"base": [2.0, 2.1], "a": [1.5, 1.6]}, study="one")
    two = runs_frame({"base": [2.0, 2.1], "a_again": [1.5, 1.6]}, study="two")  # the same training, relabelled
    longer = runs_frame({"base": [1.0, 1.1]}, study="three", steps=400)
    rows = leaderboard_rows({"one": one, "two": two, "three": longer})
    closed = rows[rows["division"] == "closed"]
    assert sorted(closed["method"]) == ["a = a_again", "base"] and set(closed["seeds"]) == {2}
    assert closed.set_index("method").loc["base", "studies"] == "one, two"
    assert rows[rows["division"] == "open"]["setting"].str.contains("400 steps").all()


def test_every_shipped_study_of_runs_is_on_the_leaderboard():
    shipped = {p.parent.name for p in (ROOT / "results" / "reference" / "data").glob("*/runs.parquet")}
    assert shipped == set(STUDIES) | set(RERUNS), "a new study: add it to the leaderboard's STUDIES (or RERUNS)"
    text = PAGE.read_text()
    for study in STUDIES:
        assert f"experiments/{study}.toml" in text, study
    assert "leaderboard.html" in (ROOT / "README.md").read_text()


def test_the_page_is_self_contained():
    text = PAGE.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "@import" not in text
    assert "<svg" in text and "<script>" in text and text.count('<table class="board">') == 2


def test_changing_one_shipped_number_makes_reference_check_fail(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    shutil.copytree(ROOT / "results" / "reference", tmp_path / "results" / "reference")
    (tmp_path / "docs").mkdir()
    for name in ("README.md", "docs/methods.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert main(["reference", "check", "leaderboard", "--root", str(tmp_path)]) == 0
    runs = tmp_path / "results" / "reference" / "data" / "methods" / "runs.parquet"
    frame = pd.read_parquet(runs)
    frame.loc[frame.index[0], "maxvio_global"] += 0.5
    frame.to_parquet(runs)
    assert main(["reference", "check", "leaderboard", "--root", str(tmp_path)]) == 1
    assert "leaderboard.html: differs from what its data gives" in capsys.readouterr().out


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(*args: str, url: str) -> str:
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--virtual-time-budget=3000", *args, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def first_methods(dom: str) -> list[str]:
    """The method cell of each closed-division row, in the order the page shows them."""
    closed = dom.split('<table class="board">')[1]
    return re.findall(r'<td class="method" data-v="([^"]*)"', closed)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium (Debian's chromium package; .ci/run installs it)")
def test_the_leaderboard_renders_and_sorts_in_headless_chromium():
    url = PAGE.as_uri()
    dom = browse("--dump-dom", url=url)
    shown = first_methods(dom)
    rows = first_methods(PAGE.read_text())
    assert len(shown) == len(rows) > 5 and dom.count("<circle") >= len(rows)
    by_loss = browse("--dump-dom", url=url + "#sort=-val_loss")
    reversed_order = first_methods(by_loss)
    assert sorted(reversed_order) == sorted(shown) and reversed_order != shown
    assert reversed_order[-1] == shown[0]  # the lowest val loss is now last
    assert 'aria-sort="descending"' in by_loss
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "leaderboard.png"
    shot.unlink(missing_ok=True)
    browse(f"--screenshot={shot}", "--window-size=1400,1800", url=url)
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert np.frombuffer(shot.read_bytes()[:8], dtype=np.uint8).tolist() == [137, 80, 78, 71, 13, 10, 26, 10]
