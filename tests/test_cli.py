"""The command line as a user runs it: output, exit status, and one-paragraph errors."""

import subprocess
import sys

from harness.cli import main
from harness.routing import describe, router_names


def test_list_prints_every_preset_with_its_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == router_names()
    for line, name in zip(lines, router_names()):
        assert describe(name) and line.endswith(describe(name))


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list"], capture_output=True, text=True, check=True)
    assert "loss_free" in out.stdout and "dynamic_k" in out.stdout
