"""A method from outside the package (issue 18): a toy controller defined here, and the README's
"Add a method" snippet, registered through a suite's `plugins`, run from TOML through the CLI,
killed and resumed, and found in the tables, the plots and the report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import tables
from harness.cli import main
from tests.conftest import TINY_BASE, kill_mid_run, toml_value
from tests.test_distributed import TIMING

README = Path(__file__).resolve().parent.parent / "README.md"

# NOTE: a toy of our own, not a shipped method: sign updates with momentum, and two buffers
TOY = textwrap.dedent('''
    import torch

    from harness.routing.controllers import BIAS_RATE, BiasController, register_controller
    from harness.routing.params import Param


    @register_controller("toy_momentum")
    class ToyMomentum(BiasController):
        """Sign updates through a momentum buffer: v <- beta v + sign(F - Q), b <- b - u v."""

        params = {"bias_rate": BIAS_RATE,
                  "toy_beta": Param(float, 0.5, "momentum of the toy's sign updates", low=0.0, high=1.0)}

        def __init__(self, num_experts, top_k, cfg):
            super().__init__(num_experts, top_k, cfg)
            self.register_buffer("velocity", torch.zeros(num_experts))
            self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

        def update(self, bias_E, counts_E, num_tokens):
            frac_E = counts_E / counts_E.sum().clamp_min(1.0)
            self.velocity.mul_(self.param("toy_beta")).add_(torch.sign(frac_E - 1.0 / self.num_experts))
            self.steps_seen += 1
            return bias_E - self.param("bias_rate") * self.velocity
''')

@pytest.fixture(autouse=True)
def registries_as_they_were():
    """A plugin registered in this process must not leak into other tests."""
    from harness.routing.controllers import CONTROLLERS
    from harness.routing.selection import SELECTIONS

    saved = dict(CONTROLLERS), dict(SELECTIONS), set(sys.modules)
    yield
    for registry, before in zip((CONTROLLERS, SELECTIONS), saved):
        registry.clear()
        registry.update(before)
    for module in set(sys.modules) - saved[2]:
        if module.startswith("moe_harness_plugin_"):
            del sys.modules[module]


RESUMABLE = {"train.steps": 40, "train.eval_every": 20, "train.checkpoint_every": 10, "train.log_every": 5}


def suite_text(plugin: str, variants: list[dict], base: dict | None = None, name: str = "plug") -> str:
    lines = [f'name = "{name}"', "seeds = [0]", f'plugins = ["{plugin}"]', "[base]"]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in {**TINY_BASE, **(base or {})}.items()]
    for variant in variants:
        lines.append("[[variants]]")
        lines += [f'"{k}" = {toml_value(v)}' for k, v in variant.items()]
    return "\n".join(lines) + "\n"


def cli(*args):
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


@pytest.mark.slow
def test_a_toy_controller_runs_from_a_suite_file_resumes_and_reaches_every_output(tmp_path):
    (tmp_path / "toy.py").write_text(TOY)
    toy = {"router": "sigmoid_topk", "label": "toy", "router.bias_mode": "toy_momentum", "router.bias_rate": 0.01,
           "router.toy_beta": 0.8}
    suite = tmp_path / "plug.toml"
    suite.write_text(suite_text("toy.py", [toy, {"router": "sigmoid_topk"}], RESUMABLE))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = subprocess.Popen(cli("run", suite, "--out", killed, "--no-progress", "--jobs", 1), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints, results = killed / "plug" / "checkpoints", killed / "plug" / "runs"
    kill_mid_run(proc, lambda: any(checkpoints.glob("*.pt")) and not any(results.glob("*.parquet")),
                 "the toy run's first checkpoint")
    state = torch.load(next(checkpoints.glob("*.pt")), weights_only=True)
    assert state["model"]["blocks.0.ffn.router.controller.velocity"].abs().sum() > 0  # its buffer is saved
    assert state["model"]["blocks.0.ffn.router.controller.steps_seen"].item() == state["step"]
    for folder in (killed, straight):
        done = subprocess.run(cli("run", suite, "--out", folder, "--no-progress", "--jobs", 1), env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert ("resuming from step" in done.stderr) == (folder == killed)
    a, b = (tables.read(folder / "plug", "runs").sort_values("variant").reset_index(drop=True)
            for folder in (killed, straight))
    same = [c for c in a.columns if c not in TIMING]
    pd.testing.assert_frame_equal(a[same], b[same])  # resumed with its buffers: the same end
    row = a[a["variant"] == "toy"].iloc[0]
    assert row["router.bias_mode"] == "toy_momentum" and row["status"] == "ok" and row["router.toy_beta"] == 0.8
    assert pd.isna(a[a["variant"] != "toy"].iloc[0]["router.toy_beta"])  # only the toy's runs have its parameter
    assert max(map(abs, row["expert_bias"][0])) > 0  # the toy controller moved the bias
    assert set(tables.read(killed / "plug", "steps")["run_id"]) == set(a["run_id"])
    assert main(["plot", str(killed / "plug")]) == 0 and main(["report", str(killed / "plug")]) == 0
    assert (killed / "plug" / "plots" / "loss_vs_balance.png").is_file()
    report = (killed / "plug" / "report.md").read_text()
    assert re.search(r"^\| toy \|", report, re.M), report[:2000]


def test_the_toy_controller_is_in_the_plots(tmp_path):
    from harness.analysis import plots

    (tmp_path / "toy.py").write_text(TOY)
    suite = tmp_path / "plug.toml"
    suite.write_text(suite_text("toy.py", [{"router": "sigmoid_topk", "label": "toy", "router.bias_mode":
                                            "toy_momentum"}, {"router": "loss_free"}]))
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    runs = tables.read(tmp_path / "plug", "runs")
    figure = plots.loss_vs_balance(runs)
    legend = [t.get_text() for ax in figure.axes for lg in [ax.get_legend()] if lg for t in lg.get_texts()]
    legend += [t.get_text() for lg in figure.legends for t in lg.get_texts()]
    assert "toy" in legend and "loss_free" in legend


def readme_snippet() -> tuple[str, str]:
    """The Python and TOML blocks of the README's "Add a method" section, as written there."""
    section = README.read_text().split("## Add a method", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    return python, toml


def test_the_readme_controller_is_the_loss_free_preset(tmp_path):
    python, toml = readme_snippet()
    assert 20 <= len(python.strip().splitlines()) <= 40  # "about 30 lines"
    (tmp_path / "my_loss_free.py").write_text(python)
    suite = tmp_path / "mine.toml"
    suite.write_text(toml + '[[variants]]\nrouter = "loss_free"\n"router.bias_rate" = 1e-2\n')
    small = [arg for k, v in TINY_BASE.items() if k != "size" for arg in ("--set", f"{k}={toml_value(v)}")]
    # NOTE: a fixed thread count: on a busy machine the governor may change it mid-run, and the last bits with it
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress", "--threads", "1", *small]) == 0
    runs = tables.read(tmp_path / "mine", "runs").set_index("router")
    mine, builtin = runs.loc["sigmoid_topk"], runs.loc["loss_free"]
    assert mine["router.bias_mode"] == "my_loss_free" and builtin["router.bias_mode"] == "loss_free"
    assert max(map(abs, mine["expert_bias"][0])) > 0
    for column in ("val_loss", "train_loss", "maxvio_global", "maxvio_batch"):
        assert mine[column] == builtin[column], column  # bit-identical to the shipped rule
    assert [list(x) for x in mine["expert_bias"]] == [list(x) for x in builtin["expert_bias"]]


@pytest.mark.parametrize("body, message", [
    ('plugins = "x.py"\n', r"plugins = 'x.py' must be a list of Python file paths"),
    ('plugins = ["missing.py"]\n', r"missing.py' is not a Python file"),
    ('plugins = ["broken.py"]\n', r"broken.py could not be imported \(SyntaxError"),
    ('plugins = ["dup.py"]\n', r"bias controller 'loss_free' \(in .*dup.py\) is already registered by .*controllers/loss_free.py"),
])
def test_bad_plugins_exit_2(tmp_path, capsys, body, message):
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "dup.py").write_text(TOY.replace('"toy_momentum"', '"loss_free"'))
    suite = tmp_path / "s.toml"
    suite.write_text(body + '[[variants]]\nrouter = "loss_free"\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.parametrize("setting, message", [
    ("router.toy_beta=2.0", r"router.toy_beta = 2.0 must be a finite number in \[0.0, 1.0\] \(momentum of the toy"),
    ('router.toy_beta="x"', r"router.toy_beta expects a value of type float, got 'x'"),
    ("router.bias_mode=loss_free", r"router.toy_beta is not read by router.selection = 'topk' or "
                                   r"router.bias_mode = 'loss_free'; it is read by router.bias_mode in \['toy_momentum'\]"),
])
def test_a_declared_parameter_is_checked_like_a_field(tmp_path, capsys, setting, message):
    (tmp_path / "toy.py").write_text(TOY)
    suite = tmp_path / "plug.toml"
    suite.write_text(suite_text("toy.py", [{"router": "sigmoid_topk", "router.bias_mode": "toy_momentum",
                                            "router.toy_beta": 0.9}]))
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


def test_an_unknown_controller_or_rule_lists_the_registered_ones(make_suite, tmp_path, capsys):
    from harness.routing.controllers import CONTROLLERS
    from harness.routing.selection import SELECTIONS

    for key, registry in (("router.bias_mode=nope", CONTROLLERS), ("router.selection=nope", SELECTIONS)):
        assert main(["run", str(make_suite([{"router": "loss_free"}])), "--out", str(tmp_path), "--set", key]) == 2
        assert f"{key.split('=')[0]} = 'nope' is not allowed; choose one of {registry.names()}" in capsys.readouterr().err
