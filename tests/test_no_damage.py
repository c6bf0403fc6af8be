"""Nothing lost, nothing silently wrong (issue 31): every case of the bad-input battery, run as a
user would through the CLI, exits 2 with a message naming the setting, the value and what is
allowed, with no traceback, and leaves every file of an existing results folder and of the
shipped results/reference byte-identical."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import tables
from harness.cli import main
from harness.routing.controllers import CONTROLLERS
from harness.routing.selection import SELECTIONS
from tests.conftest import write_suite
from tests.test_sweep import RATE_SPACE, write_sweep

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference"
SECRET = "s3cr3tPW"
ONE = [{"router": "loss_free"}]
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="the families need transformers (the dev extra)")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) -> the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and re.search(message, err), err
    assert "\n" not in err.strip()  # one paragraph


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    """A results folder of two finished runs, the data a careless command could damage."""
    out = tmp_path_factory.mktemp("victim")
    suite = write_suite(out / "victim.toml", [{"router": "loss_free"}, {"router": "softmax_topk"}], name="victim")
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    return out / "victim"


@pytest.fixture
def reference_unchanged():
    """The shipped results/reference, byte for byte, before and after the test."""
    before = snapshot(REFERENCE)
    yield
    assert snapshot(REFERENCE) == before


# -- 1. export into a table folder ---------------------------------------------------------------

@pytest.mark.parametrize("to, message", [
    ("runs", r"is inside the table folder .*runs, where every file is read as a run's rows"),
    ("steps/sub", r"is inside the table folder .*steps"),
    (".", r"is the results folder itself"),
    ("other", r"is a results folder \(it has runs\)"),
])
def test_export_never_writes_into_a_results_folders_tables(victim, tmp_path, capsys, to, message):
    other = tmp_path / "other"
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "x.parquet").write_bytes(b"another folder's run")
    dest = other if to == "other" else victim / to
    before, others = snapshot(victim), snapshot(other)
    code, _, err = cli(["export", victim, "--to", dest], capsys)
    refused(code, err, message)
    assert snapshot(victim) == before and snapshot(other) == others
    assert len(tables.read(victim, "runs")) == 2


def test_export_to_its_default_folder_still_works_and_is_not_read_as_runs(victim, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in victim.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(victim)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(victim)).write_bytes(path.read_bytes())
    code, out, _ = cli(["export", copy], capsys)
    assert code == 0 and (copy / "export" / "runs.parquet").is_file()
    assert len(tables.read(copy, "runs")) == 2  # the export is not taken for runs


# -- 2. reading commands never write --------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--tokens-per-step", "1024"]])
def test_rate_on_shipped_data_writes_nothing(reference_unchanged, capsys, extra):
    """The refusal (the study varied tokens per step) and the answer both leave the data as it was."""
    code, out, err = cli(["rate", REFERENCE / "data" / "rate_transfer", "--steps", "1600", *extra], capsys)
    assert "converting" not in err
    if extra:
        assert code == 0 and "recommended bias rate" in out, err
    else:
        refused(code, err, r"the study varied tokens per step: give the target's --tokens-per-step")


@pytest.mark.parametrize("command", ["report", "plot"])
def test_report_and_plot_on_shipped_data_need_out_and_write_only_there(reference_unchanged, tmp_path, capsys,
                                                                        command):
    study = REFERENCE / "data" / "smoke"
    code, _, err = cli([command, study], capsys)
    refused(code, err, r"is shipped reference data \(results/reference\).*give --out FOLDER")
    code, out, err = cli([command, study, "--out", tmp_path / "mine"], capsys)
    assert code == 0, err
    assert all(Path(line).resolve().is_relative_to((tmp_path / "mine").resolve()) for line in out.split())


def test_convert_refuses_shipped_data_and_report_check_stay_clean(reference_unchanged, capsys):
    code, _, err = cli(["convert", REFERENCE / "data" / "methods"], capsys)
    refused(code, err, r"is shipped reference data .* never converted")


def test_runs_are_not_added_to_a_single_file_folder_until_it_is_converted(victim, tmp_path, capsys):
    folder = tmp_path / "victim"
    exported = tmp_path / "exported"
    assert main(["export", str(victim), "--to", str(exported)]) == 0
    exported.rename(folder)
    before = snapshot(folder)
    suite = write_suite(tmp_path / "victim.toml", ONE, name="victim")
    code, _, err = cli(["run", suite, "--out", tmp_path], capsys)
    refused(code, err, r"holds single-file tables .* run `moe-harness convert .*victim` once")
    assert snapshot(folder) == before


# -- 3. passwords ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    (f"postgresql://u:x@{SECRET}@127.0.0.1:1/db", r"unencoded '@' or '/'.*percent-encode"),
    (f"postgresql://u:pa/{SECRET}@127.0.0.1:1/db", r"unencoded '@' or '/'"),
    (f"postgresql://u:{SECRET}@127.0.0.1:abc/db", r"its port is not a whole number"),
    (f"postgresql://u:{SECRET}@127.0.0.1:99999/db", r"port 99999 must be between 1 and 65535"),
    (f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/db", r"names the driver 'psycopg2'|could not be opened"),
    (f"mysql+nodriver://u:{SECRET}@127.0.0.1:1/db", r"names the driver 'nodriver'"),
    (f"postgresql://u:{SECRET}@127.0.0.1:1/db", r"could not be opened"),
    (f"notascheme://u:{SECRET}@host/db", r"unsupported scheme|not a storage URL"),
])
def test_no_message_shows_any_part_of_a_password(make_suite, tmp_path, capsys, url, message):
    code, out, err = cli(["run", make_suite(ONE), "--out", tmp_path, "--storage", url], capsys)
    refused(code, err, message)
    assert SECRET not in out + err and "***" in err


# -- 4. a rule or controller with no meaning for the score function ------------------------------

SCORES = ("softmax", "sigmoid", "relu", "softplus")
REFUSALS = [(key, name, score) for key, registry in (("selection", SELECTIONS), ("bias_mode", CONTROLLERS))
            for name, unit in registry.items() if unit.score_funcs is not None
            for score in SCORES if score not in unit.score_funcs]


def test_the_registry_declares_the_score_functions_of_threshold_rules():
    assert ("selection", "threshold", "softmax") in REFUSALS
    assert ("bias_mode", "expert_threshold", "softmax") in REFUSALS


@pytest.mark.parametrize("key, name, score", REFUSALS)
def test_a_method_is_refused_for_a_score_function_it_has_no_meaning_for(make_suite, tmp_path, capsys, key, name,
                                                                       score):
    router = "expert_threshold" if key == "bias_mode" else "dynamic_k"
    variant = {"router": router, "router.score_func": score}
    code, _, err = cli(["run", make_suite([variant]), "--out", tmp_path], capsys)
    # NOTE: Expert Threshold steers the threshold rule, which refuses softmax itself first
    who = rf"router.{key} = '{name}'" if score in SELECTIONS["threshold"].score_funcs else r"router.selection = '\w+'"
    refused(code, err, rf"{who} has no meaning for router.score_func = '{score}'; it takes score_func in \[")
    assert not (tmp_path / "tiny").exists()


# -- 5. model settings a family does not honour -------------------------------------------------------

@needs_transformers
@pytest.mark.parametrize("family, setting", [("olmoe", "model.ffn=dense"), ("mixtral", "model.num_shared=2"),
                                             ("qwen3_moe", "model.first_dense=true"),
                                             ("deepseek_v3", "model.expert_impl=loop")])
def test_a_model_setting_a_family_does_not_honour_is_refused(make_suite, tmp_path, capsys, family, setting):
    key = setting.split("=")[0]
    code, _, err = cli(["run", make_suite(ONE), "--out", tmp_path, "--set", f"model.family={family}", "--set",
                        setting], capsys)
    refused(code, err, rf"{re.escape(key)} = .* is not honoured by model.family = '{family}'.*The family honours "
                       r"\['model.dim'")
    assert not (tmp_path / "tiny").exists()


@needs_transformers
def test_a_size_that_carries_shared_experts_sizes_a_familys_yardstick_from_the_family():
    from harness.suites.keys import resolve
    from harness.engine.families import FAMILIES

    cfg = resolve({"size": "base", "model.family": "mixtral", "router": "loss_free"})
    assert cfg.model.num_shared == 0 and cfg.model.active_hidden == cfg.model.top_k * cfg.model.expert_hidden
    dense = FAMILIES.lookup("mixtral").dense_config(cfg.model)
    assert dense["intermediate_size"] == cfg.model.top_k * cfg.model.expert_hidden


@needs_transformers
def test_a_family_trait_behind_a_refusal_is_named_as_the_familys(make_suite, tmp_path, capsys):
    code, _, err = cli(["run", make_suite([{"router": "sigmoid_magnitude"}]), "--out", tmp_path, "--set",
                        "model.family=qwen3_moe"], capsys)
    refused(code, err, r"route_norm=True \(model.family = 'qwen3_moe' sets router.route_norm = True on every router "
                       r"swapped into it; set the key yourself to override it\)")


# -- 6, 7, 8. what a suite asks of its seeds and margins -------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ('seeds = { min = 2, max = 4, metric = "ep3_efficiency" }',
     r"seeds.metric names 'ep3_efficiency', which the runs of variant 'loss_free' do not record"),
    ('equivalence_margin = { ep3_efficiency = 0.05 }',
     r"equivalence_margin names 'ep3_efficiency', which the runs .* do not record .*metrics.ep_sizes = \[4, 8\]"),
    ('equivalence_margin = { "drop_frac_cf3.0" = 0.05 }', r"names 'drop_frac_cf3.0', which the runs"),
    ('seeds = { min = 2, max = 100000000 }', r"seeds.max = 100000000 is more seeds .* allowed: at most 256"),
])
def test_a_suite_asking_for_what_its_runs_cannot_give_is_refused_before_any_run(tmp_path, capsys, extra, message):
    path = write_suite(tmp_path / "s.toml", [{"router": "loss_free"}, {"router": "softmax_topk"}])
    body = path.read_text()
    if extra.startswith("seeds"):
        body = body.replace("seeds = [0]\n", "")
    path.write_text(extra + "\n" + body)
    code, _, err = cli(["run", path, "--out", tmp_path / "out"], capsys)
    refused(code, err, message)
    assert not (tmp_path / "out").exists()


# -- 9. reference ship on files that are not benchmark sessions ------------------------------------

@pytest.mark.parametrize("content, message", [
    ("[1, 2]", r"got a JSON list; expected an object with 'benchmarks'"),
    ('{"benchmarks": [{"name": "x"}], "machine_info": {}}', r"benchmark record 0 \('x'\) has no 'name' or no 'stats'"),
    ("not json", r"not JSON"),
])
def test_shipping_a_file_that_is_no_benchmark_session_exits_2(tmp_path, capsys, content, message):
    (tmp_path / "results" / "reference").mkdir(parents=True)
    source = tmp_path / "bench.json"
    source.write_text(content)
    code, _, err = cli(["reference", "ship", "bench", source, "--root", tmp_path], capsys)
    refused(code, err, message)
    assert snapshot(tmp_path / "results") == {}


# -- 10. unclear or silent --------------------------------------------------------------------

def test_rate_on_one_run_says_it_has_no_interval(make_suite, tmp_path, capsys):
    assert main(["run", str(make_suite(ONE, base={"train.steps": 20})), "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = cli(["rate", tmp_path / "tiny", "--steps", "1000"], capsys)
    assert code == 0, err
    assert "nan" not in out and "no interval: it needs at least 2 measured runs, 1 here" in out


def test_rate_on_runs_too_short_to_settle_says_so(make_suite, tmp_path, capsys):
    assert main(["run", str(make_suite(ONE, base={"train.steps": 5})), "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    code, _, err = cli(["rate", tmp_path / "tiny", "--steps", "1000"], capsys)
    refused(code, err, r"1 run\(s\) still trend over their last quarter \(no settle_step\); run them longer")


def test_a_data_glob_matching_token_shards_and_text_exits_2(make_suite, tmp_path, capsys):
    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "notes.txt").write_text("some text " * 500)
    code, _, err = cli(["run", make_suite(ONE), "--out", tmp_path / "out", "--set",
                        f"data.source={str(tmp_path / '*')!r}"], capsys)
    refused(code, err, r"matches uint16 token shards \['train.bin'\] and text files \['notes.txt'.*a source is one kind")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, message", [
    ("1e23", r"train.steps expects a value of type int \(a whole number, e.g. 1000, not 1e3\), got 1e\+23"),
    ("100000000000000000000000", r"train.steps = 100000000000000000000000 does not fit a 64-bit integer column"),
])
def test_a_step_count_no_column_can_hold_exits_2(make_suite, tmp_path, capsys, value, message):
    code, _, err = cli(["run", make_suite(ONE), "--out", tmp_path, "--set", f"train.steps={value}"], capsys)
    refused(code, err, message)
    assert not (tmp_path / "tiny").exists()


PLUGINS = {
    "native": ('from harness.routing import register_router\nfrom harness.routing.presets import loss_free\n'
               '@register_router("native")\ndef mine():\n    return loss_free()\n',
               r"router preset 'native' \(in .*reserved.py\) is a reserved name: router = 'native' means a model "
               r"family's own router"),
    "duplicate preset": ('from harness.routing import register_router\nfrom harness.routing.presets import loss_free\n'
                         '@register_router("loss_free")\ndef mine():\n    return loss_free()\n',
                         r"router preset 'loss_free' \(in .*reserved.py\) is already registered by "
                         r".*harness/routing/presets.py"),
    "duplicate metric": ('from harness.metric_registry import register_metric\n'
                         'register_metric("val_loss", "mine")\n',
                         r"reserved.py: metric 'val_loss' is already registered \(by .*metric_registry.py\)"),
}


@pytest.mark.parametrize("case", sorted(PLUGINS))
def test_a_plugin_that_takes_a_taken_or_reserved_name_is_named(make_suite, tmp_path, capsys, case):
    code_text, message = PLUGINS[case]
    (tmp_path / "reserved.py").write_text(code_text)
    suite = make_suite(ONE)
    suite.write_text('plugins = ["reserved.py"]\n' + suite.read_text())
    code, _, err = cli(["run", suite, "--out", tmp_path / "out"], capsys)
    refused(code, err, message)


@needs_transformers
def test_a_family_cannot_be_registered_as_harness():
    from harness.engine.families import FAMILIES

    with pytest.raises(ValueError, match=r"model family 'harness' .* is a reserved name"):
        FAMILIES.register("harness")(type("Mine", (), {}))


# -- 11. weak messages ----------------------------------------------------------------------------

def test_duplicate_front_values_name_the_front_not_a_variant_label(make_suite, tmp_path, capsys):
    suite = make_suite(ONE)
    suite.write_text(suite.read_text() + textwrap.dedent('''
        [front]
        router = "sigmoid_topk_aux"
        key = "router.aux_alpha"
        values = [1e-2, 0.01, 0.1]
    '''))
    code, _, err = cli(["run", suite, "--out", tmp_path / "out"], capsys)
    refused(code, err, r"front 'front': values = \[0.01, 0.01, 0.1\] lists \[0.01\] more than once")
    assert "[[variants]]" not in err


def test_a_fault_of_a_sweeps_base_is_not_blamed_on_its_space(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE)
    code, _, err = cli(["sweep", path, "--out", tmp_path / "out", "--set", "router=native"], capsys)
    refused(code, err, r"\[base\] \(with any --set\): router = 'native' runs a model family's own router")
    assert "[space]" not in err


ALWAYS_FAILS = '''
from harness.routing.controllers import BIAS_RATE, BiasController, register_controller


@register_controller("always_fails")
class AlwaysFails(BiasController):
    params = {"bias_rate": BIAS_RATE}
    selections = ("topk",)

    def update(self, bias_E, counts_E, num_tokens):
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
'''


def test_a_poisoned_cuda_context_ends_the_process_and_a_rerun_goes_on(tmp_path, monkeypatch, capsys):
    """Issue 37: the run that poisoned the context is recorded failed, the command exits with
    EXIT_POISONED naming what to do, and the same command again runs the rest (simulated: the
    context probe is made to say so)."""
    from harness.cli import main
    from harness.errors import EXIT_POISONED
    from harness.suites import runner

    (tmp_path / "fails.py").write_text(ALWAYS_FAILS)
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\nseeds = [0]\nplugins = ["fails.py"]\n[base]\nsize = "tiny"\n"train.steps" = 4\n'
                     '[[variants]]\nrouter = "sigmoid_topk"\n"router.bias_mode" = "always_fails"\nlabel = "broken"\n'
                     '[[variants]]\nrouter = "loss_free"\nlabel = "fine"\n')
    out = ["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]
    monkeypatch.setattr(runner, "device_poisoned", lambda device: True)
    assert main(out) == EXIT_POISONED
    assert "CUDA context unusable" in capsys.readouterr().err
    assert tables.read(tmp_path / "out" / "tiny").set_index("variant")["status"].to_dict() == {"broken": "failed"}
    monkeypatch.setattr(runner, "device_poisoned", lambda device: False)
    main(out)
    runs = tables.read(tmp_path / "out" / "tiny").set_index("variant")
    assert runs["status"].to_dict() == {"broken": "failed", "fine": "ok"}  # failed runs are retried: it fails again
