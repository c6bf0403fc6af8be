"""`moe-harness check` (issue 35): every harness preset and every family's own gate passes every
class that applies to it, or fails exactly where a known finding says (with its evidence); each
class catches its planted bug; the command's exit codes and files are what a user relies on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.check import CHECKS, run_checks
from harness.check.classes import ORDER
from harness.check.targets import factory, load_module
from harness.routing import ROUTERS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_router.py"
# real defects the checks find in transformers' own gates: under bf16 autocast the gate's matmul runs
# in bf16 (DeepSeek-V3's explicit float32 casts included), and near-tied top-k sets change
BF16_GATE = "got other experts under bf16 autocast (logits torch.bfloat16)"
KNOWN = {f"family:{name}": {"logits_fp32": BF16_GATE}
         for name in ("deepseek_v3", "deepseek_v4", "glm4_moe", "gpt_oss", "llama4", "mixtral", "olmoe",
                      "qwen3_5_moe", "qwen3_moe", "longcat_flash")}


def family_targets():
    pytest.importorskip("transformers")
    from harness.engine.families import family_names

    return [f"family:{name}" for name in family_names()[1:]]


def failures(target):
    return {r.name: r.evidence for r in run_checks(factory(target)) if r.verdict == "fail"}


def test_every_class_is_registered_with_a_source_and_a_claim():
    assert sorted(CHECKS) == sorted(ORDER) and len(ORDER) >= 18
    for name in ORDER:
        assert CHECKS[name].source and CHECKS[name].claim, name


@pytest.mark.parametrize("preset", ROUTERS.names())
def test_every_preset_passes_every_class_that_applies(preset):
    assert failures(preset) == {}


def test_every_family_gate_passes_or_fails_only_as_recorded():
    for target in family_targets():
        found = failures(target)
        known = KNOWN.get(target, {})
        assert set(found) == set(known), (target, found)
        for name, evidence in known.items():
            assert evidence in found[name], (target, found[name])


def test_a_class_that_does_not_apply_is_na_with_its_reason_never_a_pass():
    results = {r.name: r for r in run_checks(factory("softmax_topk"))}  # no bias, no aux, no balancing update
    for name, reason in [("gates_unbiased", "no bias"), ("aux_enabled", "aux coefficient 0"),
                         ("counts_precision", "no balancing update"), ("padding_excluded", "no padding mask")]:
        assert results[name].verdict == "n/a" and reason in results[name].evidence
    floats = {r.name: r.verdict for r in run_checks(factory("loss_free"), ["bias_bf16", "logits_fp32"], torch.float32)}
    assert floats == {"bias_bf16": "n/a", "logits_fp32": "n/a"}


# ---- one planted bug per class, in the shipped example router -------------------------------------------

Example = load_module(f"{EXAMPLE}:Adapter")
TopKRouter = load_module(f"{EXAMPLE}:TopKRouter")


def mutant(route=None, select=None, logits=None, init=None, **attrs):
    """The example adapter with one planted bug: a post-processing of route()'s answer, another
    selection or logits, or something changed after construction."""

    class Module(TopKRouter):
        pass

    if select:
        Module.select = select
    if logits:
        Module.logits = logits

    class Mutant(Example):
        def __init__(self):
            super().__init__()
            self.module.__class__ = Module
            if init:
                init(self)

        def route(self, x_TD, seq_len=None, pad_T=None):
            r = super().route(x_TD, seq_len=seq_len, pad_T=pad_T)
            return route(self, r, x_TD, seq_len, pad_T) if route else r

    for key, value in attrs.items():
        setattr(Mutant, key, value)
    return Mutant


def replaced(r, **fields):
    for key, value in fields.items():
        setattr(r, key, value)
    return r


def topk_router_k(self, x_TD):
    return self.top_k


def iterative_argmax(self, scores_TE):
    biased, picks = (scores_TE + self.bias).clone(), []
    for _ in range(self.top_k):
        pick = biased.argmax(-1)
        picks.append(pick)
        biased.scatter_(1, pick[:, None], -torch.inf)
    return torch.stack(picks, 1)


def zero_filled_groups(self, scores_TE):
    biased = scores_TE + self.bias
    grouped = biased.view(len(biased), self.n_group, -1)
    best = grouped.topk(2, dim=-1).values.sum(-1).topk(self.topk_group, dim=-1).indices
    keep = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(1, best, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), 0.0).view_as(biased).topk(self.top_k, dim=-1).indices


def double_softmax(self, r, x, seq_len, pad):
    probs = torch.softmax(torch.softmax(r.logits_TE, -1), -1).gather(1, r.ids_TK)
    return replaced(r, weights_TK=probs / probs.sum(-1, keepdim=True))


def shared_pending(self):
    type(self)._shared = getattr(type(self), "_shared", torch.zeros(self.num_experts, dtype=torch.float64))
    self._pending = type(self)._shared


def capacity_topk(self, r, x, seq_len, pad):
    capacity = max(4, int(1.25 * len(x) * self.top_k / self.num_experts))  # DeepSpeed's min_capacity of 4
    torch.sigmoid(r.logits_TE).topk(capacity, dim=0)  # the expert-side top-k of a capacity router
    return r


def eval_counts(self, r, x, seq_len, pad):
    if not self.module.training:
        self._pending += r.counts_E.double()
    return r


class RecomputeCounts(Example):
    def route(self, x_TD, seq_len=None, pad_T=None):
        if torch._C._current_graph_task_id() != -1:  # inside the backward: counted a second time
            with torch.no_grad():  # NOTE: no saved tensor, so the recomputation stays aligned
                self._pending += torch.bincount(self.module(x_TD)[2].flatten(), minlength=self.num_experts)
        return super().route(x_TD, seq_len, pad_T)


def summed_sequences(self, r, x, seq_len, pad):
    if r.aux:
        r.aux = {"aux_loss": r.aux["aux_loss"] * (len(x) // (seq_len or len(x)))}
    return r


def detached_aux(self, r, x, seq_len, pad):
    if r.aux:
        scores = torch.sigmoid(r.logits_TE.detach())
        real = torch.ones(len(x), dtype=torch.bool)
        r.aux = {"aux_loss": self.aux_coef * self.sequence_aux(scores, r.ids_TK, real, seq_len or len(x))}
    return r


def bf16_pending(self, r, x, seq_len, pad):
    if self.module.training:
        self._pending = (self._pending.bfloat16() + 0).double()  # the running sum rounded to bf16 each forward
    return r


def bf16_gate(self, x_TD):
    return F.linear(x_TD, self.weight).float()  # under autocast: a bf16 matmul


def bf16_bias_select(self, scores_TE):
    return (scores_TE + self.bias.bfloat16()).topk(self.top_k, dim=-1).indices


def random_ties(self, scores_TE):
    return (scores_TE + self.bias + 1e-6 * torch.rand_like(scores_TE)).topk(self.top_k, dim=-1).indices


def non_persistent_bias(self):
    self.module.register_buffer("bias", self.module.bias, persistent=False)


MUTANTS = {
    "counts_total": mutant(lambda s, r, *_: replaced(r, counts_E=torch.bincount(r.ids_TK[:, 0], minlength=8).float())),
    "gates_unbiased": mutant(lambda s, r, *_: replaced(r, weights_TK=r.weights_TK + s.bias[r.ids_TK])),
    "logits_raw": mutant(lambda s, r, *_: replaced(r, logits_TE=torch.softmax(r.logits_TE, -1))),
    "gate_formula": mutant(double_softmax),
    "renorm_flag": mutant(lambda s, r, *_: replaced(r, weights_TK=torch.sigmoid(r.logits_TE).gather(1, r.ids_TK))),
    "gate_gradient": mutant(lambda s, r, *_: replaced(r, weights_TK=torch.softmax(
        r.logits_TE.gather(1, r.ids_TK[:, :1]), -1).expand(-1, 2))),
    "aux_enabled": mutant(lambda s, r, *_: replaced(r, aux=None)),
    "aux_gradient": mutant(detached_aux),
    "aux_batch_invariant": mutant(summed_sequences),
    "padding_excluded": mutant(lambda s, r, x, seq_len, pad: Example.route(s, x, seq_len)),
    "eval_frozen": mutant(eval_counts),
    "recompute_once": RecomputeCounts,
    "group_mask": mutant(select=zero_filled_groups),
    "bias_bf16": mutant(select=bf16_bias_select),
    "counts_precision": mutant(bf16_pending),
    "logits_fp32": mutant(logits=bf16_gate),
    "tiny_batch": mutant(capacity_topk),
    "tie_determinism": mutant(select=random_ties),
    "unique_experts": mutant(select=iterative_argmax),
    "mixed_stack": mutant(init=shared_pending),
    "bias_roundtrip": mutant(init=non_persistent_bias),
}


def test_the_example_router_passes_every_class():
    results = run_checks(load_module(f"{EXAMPLE}:build"))
    assert {r.name: r.verdict for r in results} == dict.fromkeys(ORDER, "pass")


def test_every_class_has_a_mutation():
    assert sorted(MUTANTS) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_each_class_catches_its_planted_bug(name):
    (result,) = run_checks(MUTANTS[name], [name])
    assert result.verdict == "fail", result
    assert any(ch.isdigit() for ch in result.evidence), result.evidence  # the numbers, not only the word


# ---- the command -------------------------------------------------------------------------------------------

def cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness.cli", "check", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_the_example_exits_0_with_the_table_and_writes_only_its_report(tmp_path):
    before = set(os.listdir(ROOT))
    out = cli(f"module:{EXAMPLE}:build", "--report", str(tmp_path / "mine"))
    assert out.returncode == 0, out.stderr
    assert "bias_roundtrip" in out.stdout and "21 pass, 0 fail" in out.stdout
    assert sorted(os.listdir(tmp_path)) == ["mine.json", "mine.md"] and set(os.listdir(ROOT)) == before
    report = json.loads((tmp_path / "mine.json").read_text())
    assert report["failed"] == [] and len(report["results"]) == len(ORDER)
    assert "| group_mask | pass |" in (tmp_path / "mine.md").read_text()


def test_a_failing_class_exits_1_with_its_evidence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                   "from test_check import MUTANTS\nbuild = MUTANTS['counts_total']\n")
    out = cli(f"module:{bad}:build", "--only", "counts_total", "eval_frozen")
    assert out.returncode == 1, out.stderr
    assert "counts sum to" in out.stdout and "1 check(s) failed: counts_total" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["nope"], "target 'nope' is not allowed"),
    (["family:nope"], "unknown family 'nope'"),
    (["module:missing.py:build"], "no file 'missing.py'"),
    (["module:{dir}/m.py:nothing"], "has no callable 'nothing'"),
    (["module:{dir}/m.py:raises"], "building the adapter raised RuntimeError: broken"),
    (["module:{dir}/m.py:lacking"], "lacks what a check needs; provide top_k"),
    (["loss_free", "--only", "nope"], "--only = 'nope' is not allowed"),
    (["loss_free", "--report", "{dir}/no/such/r"], "no folder"),
])
def test_bad_input_exits_2_naming_the_problem(tmp_path, args, message):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "def raises():\n    raise RuntimeError('broken')\n"
        "class Lacking:\n    num_experts, dim = 8, 4\n    module = torch.nn.Linear(4, 8)\n"
        "    def route(self, x, seq_len=None):\n        pass\n"
        "def lacking():\n    return Lacking()\n")
    if "family:nope" in args:
        pytest.importorskip("transformers")
    out = cli(*[a.format(dir=tmp_path) for a in args], cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, (out.returncode, out.stderr)
    assert sorted(os.listdir(tmp_path)) == ["m.py"]
