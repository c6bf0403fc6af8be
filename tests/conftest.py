"""Shared fixtures: a tiny suite that trains in about a second per run."""

import contextlib
import signal
import textwrap
import time
from pathlib import Path

import pytest

TINY_BASE = {
    "size": "tiny",
    "model.dim": 32,
    "model.num_heads": 2,
    "model.seq_len": 32,
    "model.expert_hidden": 32,
    "train.steps": 6,
    "train.batch_size": 4,
    "train.eval_every": 3,
    "train.eval_batches": 2,
    "train.log_every": 2,
    "train.warmup_steps": 2,
    "train.device": "cpu",
}


@pytest.fixture(autouse=True)
def one_process(monkeypatch, tmp_path_factory):
    """Suites run in the test's own process unless a test asks for --jobs: monkeypatches reach them.
    Tokenizer caches go to a folder of this test session, not the user's ~/.cache."""
    monkeypatch.setenv("MOE_HARNESS_JOBS", "1")
    monkeypatch.delenv("MOE_HARNESS_STORAGE", raising=False)  # a user's own queue must not capture the tests
    monkeypatch.delenv("MOE_HARNESS_THREADS", raising=False)  # `main([... "--threads", N])` sets it: undone after
    monkeypatch.setenv("MOE_HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_settings():
    return dict(TINY_BASE)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def write_suite(path, variants, name="tiny", seeds=(0,), base=None, extra=""):
    base = {**TINY_BASE, **(base or {})}
    lines = [f'name = "{name}"', f"seeds = {list(seeds)}", "[base]"]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in base.items()]
    for variant in variants:
        lines.append("[[variants]]")
        lines += [f'"{k}" = {toml_value(v)}' for k, v in variant.items()]
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return path


@pytest.fixture
def make_suite(tmp_path):
    def make(variants, **kwargs):
        return write_suite(tmp_path / f"{kwargs.get('name', 'tiny')}.toml", variants, **kwargs)

    return make


def _postgres_database(admin_url: str) -> str:
    """A fresh, empty database on the test server (MOE_HARNESS_TEST_POSTGRES, set by .ci/run)."""
    import uuid

    import psycopg

    name = f"moe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """An empty Optuna storage: SQLite always, PostgreSQL where a test server is configured."""
    import os

    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    admin = os.environ.get("MOE_HARNESS_TEST_POSTGRES")
    if not admin:
        pytest.skip("no PostgreSQL test server (MOE_HARNESS_TEST_POSTGRES unset; .ci/run starts one)")
    return _postgres_database(admin)


def wait_until(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_mid_run(proc, holds, what):
    """SIGKILL `proc` at a moment `holds()` is true (it holds a claimed trial, it has written a
    checkpoint but not its results). The process is frozen (SIGSTOP) before the last look, so it
    cannot finish between the look and the kill; if it did finish first, it goes on and we wait again."""
    while True:
        wait_until(lambda: proc.poll() is not None or holds(), what=what)
        assert proc.poll() is None, f"the process exited before {what}"
        proc.send_signal(signal.SIGSTOP)
        if holds():
            proc.kill()
            proc.wait()
            return
        proc.send_signal(signal.SIGCONT)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts each rank in a session of its own, so a process
    group signal would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree
