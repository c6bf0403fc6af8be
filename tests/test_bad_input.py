"""Every bad input a user tried (issue 11) ends with exit 2, one paragraph naming the key or path
and what is allowed, no traceback, and nothing written; a failed run makes the command exit 1."""

import re

import pandas as pd
import pytest

from harness import tables
from harness.cli import main
from tests.test_sweep import RATE_SPACE, write_sweep

ONE_VARIANT = [{"router": "loss_free"}]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code, err, message):
    assert code == 2, err
    assert "Traceback" not in err and re.search(message, err), err
    assert "\n" not in err.strip()  # one paragraph


@pytest.mark.parametrize("override, message", [
    ("train.warmup_steps=-1", r"train.warmup_steps = -1 must be >= 0"),
    ("train.grad_clip=-1.0", r"train.grad_clip = -1.0 must be a finite number in \[0.0, inf\]"),
    ("train.weight_decay=-0.1", r"train.weight_decay = -0.1 must be a finite number"),
    ("train.min_lr_ratio=-0.5", r"train.min_lr_ratio = -0.5 must be a finite number in \[0.0, 1.0\]"),
    ("train.min_lr_ratio=1.5", r"train.min_lr_ratio = 1.5"),
    ("train.lr=nan", r"train.lr = nan must be a finite number in \(0.0, inf\]"),
    ("router.bias_rate=inf", r"router.bias_rate = inf must be a finite number in \[0.0, inf\] \(bias update rate u"),
    ("router.qb_ema=0.5", r"router.qb_ema is not read by router.selection = 'topk' or router.bias_mode = 'loss_free'; "
                          r"it is read by router.bias_mode in \['quantile'\]"),
    ("train.eval_every=-5", r"train.eval_every = -5 must be >= 0"),
    ("train.data_seed=-2", r"train.data_seed = -2 must be >= 0, or -1"),
    ("model.rope_theta=0", r"model.rope_theta = 0.0 must be a finite number > 0"),
    ("router.capacity_factor=-1.0", r"router.capacity_factor = -1.0 must be a finite number >= 0"),
    ("router.drop_policy=random", r"router.drop_policy = 'random' is not allowed; choose one of \['probs', 'position'\]"),
    ("router.n_group=3", r"router.n_group = 3 must divide model.num_experts = 8"),
    ("router.aux_counts=biased", r"router.aux_counts = 'biased' is not allowed; choose one of \['dispatched', 'unbiased'\]"),
    ("metrics.ep_sizes=[0]", r"metrics.ep_sizes = \[0\] must be a list of whole numbers >= 1"),
    ("metrics.capacity_factors=[-1.0]", r"metrics.capacity_factors = \[-1.0\] must be a list of finite"),
    ("router.ec_chunk=16", r"router.ec_chunk is not read by .* it is read by router.selection in \['expert_choice'\]"),
    ("data.tokenizer=bpe:99", r"data.tokenizer = 'bpe:99': V must be between 260"),
    ("data.tokenizer=wordpiece", r"data.tokenizer = 'wordpiece' is not allowed; use 'bytes'"),
    ('train.log_to=["mlflow"]', r"train.log_to: 'mlflow' is not allowed; choose from \['tensorboard', 'wandb'\]"),
    ("seed=-1", r"--set sets seed = -1, but the runs take their seeds from the top-level `seeds` list"),
    ("metrics.ep_sizes=[4, 3]", r"metrics.ep_sizes = \[4, 3\]: \[3\] do not divide model.num_experts = 8; "
                                r"choose sizes among \[1, 2, 4, 8\]"),
])
def test_out_of_range_values_exit_2(make_suite, tmp_path, capsys, override, message):
    code, _, err = run_cli(["run", make_suite(ONE_VARIANT), "--out", tmp_path, "--set", override], capsys)
    assert_clean_error(code, err, message)
    assert not (tmp_path / "tiny").exists()  # nothing ran, nothing written


def test_a_seq_len_longer_than_the_data_exits_2(make_suite, tmp_path, capsys):
    data = tmp_path / "tiny.txt"
    data.write_text("a short text of a few hundred bytes. " * 10)
    code, _, err = run_cli(["run", make_suite(ONE_VARIANT), "--out", tmp_path, "--set", f"data.source={str(data)!r}",
                            "--set", "model.seq_len=64"], capsys)
    assert_clean_error(code, err, r"model.seq_len = 64 does not fit data.source = .*tiny.txt.*use model.seq_len <=")


def test_a_bin_shard_of_an_odd_byte_count_exits_2(make_suite, tmp_path, capsys):
    import numpy as np

    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "val.bin")
    with open(tmp_path / "val.bin", "ab") as f:
        f.write(b"\x01")  # half a token: a truncated copy
    code, _, err = run_cli(["run", make_suite(ONE_VARIANT), "--out", tmp_path / "out", "--set",
                            f"data.source={str(tmp_path / '*.bin')!r}", "--set", "model.vocab_size=5056"], capsys)
    assert_clean_error(code, err, r"val.bin has an odd number of bytes, so it is not whole uint16 tokens")
    assert not (tmp_path / "out").exists()


def test_a_seed_below_zero_in_a_suite_file_exits_2(make_suite, tmp_path, capsys):
    code, _, err = run_cli(["run", make_suite(ONE_VARIANT, seeds=(0, -3)), "--out", tmp_path], capsys)
    assert_clean_error(code, err, r"seeds = \[0, -3\]: seed -3 must be a whole number >= 0")


def test_export_to_an_existing_file_exits_2_and_leaves_it(make_suite, tmp_path, capsys):
    assert main(["run", str(make_suite(ONE_VARIANT)), "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    target = tmp_path / "keep.txt"
    target.write_text("mine")
    code, _, err = run_cli(["export", tmp_path / "tiny", "--to", target], capsys)
    assert_clean_error(code, err, r"--to '.*keep.txt' is a file, not a folder; name a folder")
    assert target.read_text() == "mine"
    code, out, _ = run_cli(["export", tmp_path / "tiny", "--to", tmp_path / "new" / "folder"], capsys)
    assert code == 0 and len(pd.read_parquet(tmp_path / "new" / "folder" / "runs.parquet")) == 1


@pytest.mark.parametrize("body, message", [
    ("", r"a suite needs at least one \[\[variants\]\] table"),
    ('name = "x"\nvariants = []\n', r"variants = \[\]: a suite needs at least one"),
    ('name = "x"\nvariants = "x"\n', r"variants = 'x': a suite needs at least one"),
    ('name = "../../x"\n[[variants]]\nrouter = "loss_free"\n', r"name = '../../x' must be a plain folder name"),
    ('name = 5\n[[variants]]\nrouter = "loss_free"\n', r"name = 5 must be a plain folder name"),
    ('name = "x"\n[[variants]]\nrouter = "loss_free"\n[[variants]]\nrouter = "loss_free"\n',
     r"variant label\(s\) \['loss_free'\] appear more than once"),
    ('name = "x"\nbaseline = "nope"\n[[variants]]\nrouter = "loss_free"\n', r"baseline = 'nope' is not a variant"),
    ('name = "x"\nseeds = [1, 1]\n[[variants]]\nrouter = "loss_free"\n', r"lists a seed twice"),
    ('name = "x"\nbase = 3\n[[variants]]\nrouter = "loss_free"\n', r"base = 3 must be a table"),
])
def test_bad_suite_files_exit_2(tmp_path, capsys, body, message):
    path = tmp_path / "suite.toml"
    path.write_text(body)
    code, _, err = run_cli(["run", path, "--out", tmp_path / "out"], capsys)
    assert_clean_error(code, err, message)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("out, message", [
    ("a_file/sub", r"--out .*cannot write the results folder"),
    ("a_file", r"--out .*cannot write the results folder"),
    ("/proc/moe-harness-test", r"--out .*cannot write the results folder"),
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_an_unwritable_out_exits_2(make_suite, tmp_path, capsys, out, message, command):
    (tmp_path / "a_file").write_text("not a folder")
    out = out if out.startswith("/") else tmp_path / out
    path = make_suite(ONE_VARIANT) if command == "run" else write_sweep(tmp_path / "s.toml", RATE_SPACE)
    code, _, err = run_cli([command, path, "--out", out], capsys)
    assert_clean_error(code, err, message)


@pytest.mark.parametrize("space, message", [
    ('"model.top_k" = { type = "int", low = 1, high = 9 }', r"'model.top_k' can sample 9.*top_k = 9 must be <="),
    ('"router.bias_update" = { type = "categorical", choices = ["sign", "abs"] }', r"router.bias_update = 'abs'"),
    ('"train.min_lr_ratio" = { type = "float", low = 0.1, high = 2.0 }', r"can sample 2.0"),
])
def test_sweep_spaces_are_checked_at_both_ends_and_every_choice(tmp_path, capsys, space, message):
    code, _, err = run_cli(["sweep", write_sweep(tmp_path / "s.toml", space), "--out", tmp_path], capsys)
    assert_clean_error(code, err, message)


def test_a_changed_sweep_on_an_existing_study_is_refused_unless_renamed(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE)
    assert main(["sweep", str(path), "--out", str(tmp_path), "--n-trials", "1"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(["sweep", path, "--out", tmp_path, "--n-trials", "1", "--set", "train.steps=4"], capsys)
    assert_clean_error(code, err, r"started with another sweep: base \(train.steps\) changed.*--study-name")
    changed = write_sweep(tmp_path / "s2.toml", RATE_SPACE, objective='metrics = ["train_loss"]\npruner = "none"')
    code, _, err = run_cli(["sweep", changed, "--out", tmp_path, "--n-trials", "1"], capsys)
    assert_clean_error(code, err, r"metrics changed")
    code, _, _ = run_cli(["sweep", changed, "--out", tmp_path, "--n-trials", "1", "--study-name", "other"], capsys)
    assert code == 0


def test_plot_and_report_on_a_folder_where_every_run_diverged(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "softmax_topk", "train.lr": 1e6, "train.grad_clip": 0.0}],
                       base={"train.steps": 20})
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 0  # diverged is a result, not a failure
    capsys.readouterr()
    for command in ("plot", "report"):
        code, _, err = run_cli([command, tmp_path / "tiny"], capsys)
        assert_clean_error(code, err, r"no run in this folder finished")


@pytest.mark.slow
def test_the_issue_repro_gives_two_groups_per_variant_named_by_steps(tmp_path, capsys):
    from pathlib import Path

    smoke = Path(__file__).parent.parent / "experiments" / "smoke.toml"
    common = ["--out", tmp_path, "--set", "model.dim=32", "--set", "model.num_heads=2", "--set",
              "model.expert_hidden=32", "--set", "model.seq_len=32", "--set", "train.batch_size=4"]
    assert main([str(a) for a in ["run", smoke, *common, "--set", "train.steps=8", "--set", "train.eval_every=4"]]) == 0
    assert main([str(a) for a in ["run", smoke, *common, "--set", "train.steps=4", "--set", "train.eval_every=2"]]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "smoke")]) == 0
    markdown = (tmp_path / "smoke" / "report.md").read_text()
    for variant in ("loss_free", "softmax_topk", "dynamic_k"):
        assert f"| {variant} [train.steps=8, train.eval_every=4] | 1 |" in markdown
        assert f"| {variant} [train.steps=4, train.eval_every=2] | 1 |" in markdown
    assert "## Against the baseline" in markdown and "softmax_topk [train.steps=4, train.eval_every=2]" in markdown
    assert len(list((tmp_path / "smoke" / "resolved").glob("*.json"))) == 2
    runs = tables.read(tmp_path / "smoke", "runs")
    assert runs.groupby("config_id")["train.steps"].nunique().eq(1).all() and runs["config_id"].nunique() == 10
    assert isinstance(runs, pd.DataFrame)


@pytest.mark.parametrize("line, message", [
    ("seeds = [true]", r"seeds = \[True\] must be a non-empty list of integers"),
    ("seeds = [1, 1]", r"seeds = \[1, 1\] lists a seed twice"),
    ("seeds = [-1]", r"seeds = \[-1\]: seed -1 must be a whole number >= 0"),
    ('name = "../x"', r"name = '../x' must be a plain folder name"),
    ('plugins = "p.py"', r"plugins = 'p.py' must be a list of Python file paths"),
    ("nope = 1", r"unknown (suite|sweep) key\(s\) \['nope'\]"),
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_suite_and_sweep_files_share_one_rule_per_key(make_suite, tmp_path, capsys, line, message, command):
    """One validation module: a suite and a sweep give the same answer for the same key."""
    path = make_suite(ONE_VARIANT) if command == "run" else write_sweep(tmp_path / "s.toml", RATE_SPACE)
    key = line.split(" = ")[0]
    kept = [ln for ln in path.read_text().splitlines() if not ln.startswith(f"{key} =")]
    path.write_text(line + "\n" + "\n".join(kept) + "\n")
    code, _, err = run_cli([command, path, "--out", tmp_path / "out"], capsys)
    assert_clean_error(code, err, message)
    assert not (tmp_path / "out").exists()
