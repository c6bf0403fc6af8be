"""Every number a reference page or the README prints comes from the data shipped beside it
(issue 25, item 4): the pages rebuild to what is committed, an edited number is caught, and
shipping compacts a results folder."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness import tables
from harness.analysis import reference
from harness.analysis.reference import data as refdata
from harness.cli import main
from harness.engine.train import RunResult

ROOT = Path(__file__).resolve().parent.parent


def test_every_reference_page_and_readme_block_is_what_its_data_gives():
    problems = reference.check(ROOT)
    assert not problems, "\n".join(problems)


def test_the_shipped_data_is_in_the_repository_and_compact():
    shipped = [p for p in (ROOT / "results" / "reference" / "data").rglob("*.parquet")]
    assert {p.parent.name for p in shipped} >= {s for page in reference.PAGES.values() for s in page.sources}
    assert sum(p.stat().st_size for p in shipped) < 10 * 2**20  # all studies together under 10 MB


@pytest.fixture
def copy(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copytree(ROOT / "results" / "reference", tmp_path / "results" / "reference")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "methods.md", tmp_path / "docs" / "methods.md")
    return tmp_path


def test_a_number_edited_by_hand_in_the_readme_is_caught(copy, capsys):
    readme = copy / "README.md"
    text = readme.read_text()
    block = text.split("<!-- reference:smoke -->", 1)[1].split("<!-- /reference:smoke -->", 1)[0]
    edited = block.replace("| loss_free | ", "| loss_free | 9", 1)
    assert edited != block
    readme.write_text(text.replace(block, edited))
    assert main(["reference", "check", "--root", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "README.md: differs from what its data gives" in out and "| loss_free | 9" in out
    assert main(["reference", "build", "--root", str(copy)]) == 0  # rebuilding puts the data's number back
    assert main(["reference", "check", "--root", str(copy)]) == 0


def test_a_number_edited_in_a_page_or_its_data_is_caught(copy, capsys):
    page = copy / "results" / "reference" / "smoke_cpu.md"
    page.write_text(page.read_text().replace("| loss_free | ", "| loss_free | 2", 1))
    assert main(["reference", "check", "smoke", "--root", str(copy)]) == 1
    assert "smoke_cpu.md: differs from what its data gives" in capsys.readouterr().out
    main(["reference", "build", "smoke", "--root", str(copy)])
    runs = copy / "results" / "reference" / "data" / "smoke" / "runs.parquet"
    frame = pd.read_parquet(runs)
    frame.loc[frame["variant"] == "loss_free", "val_loss"] += 0.01  # the data changes: the page no longer says so
    frame.to_parquet(runs)
    assert main(["reference", "check", "smoke", "--root", str(copy)]) == 1


def test_shipping_keeps_every_run_thins_the_steps_and_keeps_the_final_loads(tmp_path):
    for i in range(2):
        steps = [{"run_id": f"r{i}", "step": s, "train_loss": 1.0, "val_loss": 2.0 if s % 100 == 0 else None}
                 for s in range(1, 1001)]
        loads = [{"run_id": f"r{i}", "step": s, "layer": 0, "expert": e, "scope": scope, "load": 0.5}
                 for s in (500, 1000) for e in range(2) for scope in ("global", "batch", "domain:os")]
        tables.append_run(tmp_path / "suite", RunResult({"run_id": f"r{i}", "status": "ok"}, steps, loads))
    reference.ship(tmp_path, "mine", tmp_path / "suite")
    shipped = refdata.load(tmp_path / "results" / "reference" / "data" / "mine")
    assert len(shipped.runs) == 2
    per_run = shipped.steps.groupby("run_id")
    assert per_run.size().max() <= refdata.MAX_STEP_ROWS
    assert set(per_run["step"].max()) == {1000}
    assert shipped.steps["val_loss"].notna().sum() == 2 * 10  # every evaluation kept
    assert set(shipped.loads["step"]) == {1000} and set(shipped.loads["scope"]) == {"global", "batch"}


def test_fill_blocks_replaces_only_named_blocks():
    text = "a\n<!-- reference:x -->\nold\n<!-- /reference:x -->\nb\n<!-- reference:y -->\nkeep\n<!-- /reference:y -->\n"
    out = reference.fill_blocks(text, {"x": "new"})
    assert "new" in out and "old" not in out and "keep" in out
    with pytest.raises(ValueError, match="README block 'y' is built by no reference page"):
        reference.fill_blocks(text, {"x": "new"}, strict=True)


@pytest.mark.slow
def test_the_shipped_simulation_is_what_the_code_simulates():
    """A study made by code (sequential seeds' error rates): simulated again, the same table."""
    from harness.analysis.reference.data import load
    from harness.analysis.reference.sequential import simulate

    shipped = load(ROOT / "results" / "reference" / "data" / "sequential").tables["simulation"]
    pd.testing.assert_frame_equal(simulate()["simulation"], shipped)


def test_a_page_that_no_study_makes_is_caught(copy, capsys):
    stray = copy / "results" / "reference" / "old_study_cpu.md"
    stray.write_text("# An old study\n\nLoss-Free 1.234\n")  # numbers whose data was never shipped
    assert main(["reference", "check", "--root", str(copy)]) == 1
    assert "old_study_cpu.md: made by no reference page from shipped data" in capsys.readouterr().out



def test_every_benchmark_that_misses_its_goal_says_why_from_a_measurement():
    """A "misses" row of the benchmark page carries its measured reason (a roofline, a profile, or for
    whole runs the threads they kept and the spread of their rounds)."""
    from harness.analysis.reference.bench import Session, full_table

    rows = pd.read_parquet(ROOT / "results" / "reference" / "data" / "bench" / "benchmarks.parquet")
    table = full_table(Session(rows))
    misses = table[table[""] == "misses"]
    assert not misses[~misses["note"].str.contains("profile|bound|rounds spread", regex=True)]["benchmark"].tolist()


def test_a_ratio_timed_in_alternating_pairs_is_the_one_the_page_prints_and_says_so():
    """A family block's goal ratio is the median of its alternating pairs, not the two medians' ratio,
    and its note says which it is and what the medians gave."""
    import json

    from harness.analysis.reference.bench import Session, full_table

    rows = pd.DataFrame([
        {"key": "block[native]", "vs": None, "target": None, "note": "", "median": 0.100, "info": "{}"},
        {"key": "block[harness]", "vs": "block[native]", "target": 1.05, "note": "profile, ms per call: ...",
         "median": 0.120, "info": json.dumps({"paired_ratio": 1.01, "pairs": 15})}])
    session = Session(rows)
    assert session.ratio("block[harness]") == pytest.approx(1.01)
    assert session.ratio("block[harness]", "block[native]") == pytest.approx(1.01)
    row = full_table(session).set_index("benchmark").loc["block[harness]"]
    assert row["ratio"] == "1.010" and row[""] == "meets"
    assert row["note"].startswith("ratio: median of 15 alternating pairs (the medians' ratio 1.200); profile")
