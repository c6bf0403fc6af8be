"""Shared fixtures: a tiny suite that trains in about a second per run."""

import textwrap

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
