"""Real architectures as the proxy (issue 28): each transformers family with the harness router as
its own routing equals the untouched model (logits and gradients, float64), any registered router
runs inside it from a suite through the CLI, and a bad family, a family with no MoE layer or a
rule it cannot take exits 2 before anything is written."""

import importlib.util

import re

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from harness import tables  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.engine.families.resolve import family_router  # noqa: E402
from harness.routing.selection import SELECTIONS  # noqa: E402
from harness.suites.keys import resolve  # noqa: E402
from harness.engine.families import FAMILIES, FamilyLM, sparse_blocks, transformers_module  # noqa: E402
from harness.engine.families.gates import SwappedGate  # noqa: E402
from harness.engine.model import model_config  # noqa: E402
from harness.engine.train import run  # noqa: E402

NEW_2026 = ("glm4_moe", "qwen3_5_moe", "gpt_oss", "llama4", "deepseek_v4", "longcat_flash")  # the families of issue 34
SMALL = {"model.dim": 32, "model.num_heads": 2, "model.seq_len": 16, "model.expert_hidden": 32, "model.num_layers": 2}


def untouched(name: str, model) -> torch.nn.Module:
    transformers = transformers_module()
    family = FAMILIES.lookup(name)
    hf = getattr(transformers, family.model_class)(getattr(transformers, family.config_class)(**family.hf_config(model)))
    family.prepare(hf, model)  # NOTE: what the family settles after init (DeepSeek-V4's table), as FamilyLM does
    return hf


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference over the largest magnitude: 1e-6 is agreement to six digits."""
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).detach())


@pytest.mark.parametrize("name", FAMILIES.names())
def test_the_harness_router_as_the_familys_own_routing_equals_the_untouched_model(name):
    model = model_config("tiny", family=name, **{k.removeprefix("model."): v for k, v in SMALL.items()})
    cfg = family_router("native", model, {})  # the family's own routing, written as a harness router
    torch.manual_seed(0)
    swapped = FamilyLM(model, cfg).double()
    torch.manual_seed(0)
    reference = untouched(name, model).double()
    for config in (swapped.hf.config, reference.config):  # NOTE: the fast expert paths take no float64
        config._experts_implementation = "eager"
    x = torch.randint(0, model.vocab_size, (3, model.seq_len))
    mine, theirs = swapped(x), reference(input_ids=x, use_cache=False).logits
    assert relative(mine, theirs) < 1e-6
    upstream = torch.randn_like(mine)
    (mine * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    # NOTE: the swapped router's weight sits at <block>.<gate_name>[.gate].router.gate (gate: Llama 4's wrapper)
    own = f".{model.family_class.gate_name}."
    # (a gate the family keeps, DeepSeek-V4's hash layers', at <block>.<gate_name>.native)
    # (LongCat's router holds its Linear at .classifier: the swapped weight maps there)
    linear = f"{own}{model.family_class.gate_linear}." if model.family_class.gate_linear else own
    grads = {re.sub(rf"{re.escape(own)}((gate\.)?router\.gate\.|native\.)",
                    lambda found: own if found.group(1) == "native." else linear, n): p.grad
             for n, p in swapped.hf.named_parameters()}
    compared = 0
    for n, p in reference.named_parameters():  # NOTE: DeepSeek's own router runs in float32 even in a float64 model
        if p.grad is None:  # NOTE: a part this input does not reach (DeepSeek-V4's indexer at a short context)
            assert grads[n] is None, f"gradient of {n}"
        else:
            assert relative(grads[n], p.grad) < 1e-6, f"gradient of {n}"
        compared += 1
    assert compared == len(grads) and any(own in n for n in grads)  # the router's weight too


@pytest.mark.parametrize("name", FAMILIES.names())
@pytest.mark.parametrize("router", ["loss_free", "quantile_threshold", "native"])
def test_any_router_trains_inside_every_family(tiny_settings, name, router):
    cfg = resolve({**tiny_settings, **SMALL, "model.family": name, "router": router, "train.steps": 4,
                   "train.eval_every": 2})
    record = run(cfg).record
    assert record["status"] == "ok" and pd.notna(record["val_loss"]) and record["model.family"] == name
    assert record["maxvio_global"] >= 0 and record["num_params"] > 0
    if router == "loss_free":
        assert max(max(map(abs, layer)) for layer in record["expert_bias"]) > 0  # a swapped router's bias moved


@pytest.mark.parametrize("name", FAMILIES.names())
@pytest.mark.parametrize("router", ["loss_free", "dynamic_k", "switch_capacity", "expert_threshold"])
def test_a_fixed_k_router_hands_its_routing_over_unpadded_and_the_rest_are_masked(name, router):
    """Fixed k: the family's experts get [T, k] views and skip their masking of empty slots; variable
    k, drops and rerouting pad and keep it. The unmasked fixed-k block equals the masked one."""
    model = model_config("tiny", family=name, **{k.removeprefix("model."): v for k, v in SMALL.items()})
    lm = FamilyLM(model, family_router(router, model, {}))
    fixed = router == "loss_free"
    blocks = sparse_blocks(lm.hf, model.family_class.gate_name)
    assert len(blocks) == len(lm.gates) > 0
    # NOTE: a gate the family keeps under any router (DeepSeek-V4's hash layers) is not swapped
    blocks = [b for b, gate in zip(blocks, lm.gates) if isinstance(gate, SwappedGate)]
    assert blocks and all(gate.fixed_k == fixed for gate in lm.gates if isinstance(gate, SwappedGate))
    assert all(getattr(b.experts, "_is_expert_parallel", not fixed) == (not fixed) for b in blocks)
    if fixed:
        x = torch.randint(0, model.vocab_size, (2, model.seq_len))
        plain = lm(x)
        for b in blocks:
            b.experts._is_expert_parallel = True
        assert relative(plain, lm(x)) < 1e-6


@pytest.mark.parametrize("name", FAMILIES.names())
@pytest.mark.parametrize("router", ["loss_free", "dynamic_k", "native"])
def test_a_swapped_routers_block_sends_its_experts_one_row_per_assignment_and_none_for_an_empty_slot(name, router):
    """A slot the harness router leaves empty (variable k, LongCat's identity mass) costs the family's
    experts nothing: the ids they are handed name a real expert exactly as often as the route assigned
    one, plus, where the router hands its choices of zero-computation experts over as the family's own
    does (LongCat's fixed k), one weight-0 row each, as in the untouched block. (LongCat's block sent
    an empty slot at id n to expert 0 with weight 0: 1.6x the matmul time.)"""
    model = model_config("tiny", family=name, **{k.removeprefix("model."): v for k, v in SMALL.items()})
    lm = FamilyLM(model, family_router(router, model, {}))
    pairs = [(b, g) for b, g in zip(sparse_blocks(lm.hf, model.family_class.gate_name), lm.gates)
             if isinstance(g, SwappedGate)]
    handed = []

    def count(experts, args, kwargs):
        ids = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t) and not t.is_floating_point()]
        handed.append(int((ids[0] < experts.num_experts).sum()) if ids else None)

    for block, _ in pairs:
        block.experts.register_forward_pre_hook(count, with_kwargs=True)
    lm(torch.randint(0, model.vocab_size, (2, model.seq_len)))
    if handed and handed[0] is None:
        pytest.skip(f"{name}'s experts take every token, weighted, not ids (Llama 4's dense dispatch)")
    zero_rows = [0 if g.last_route.slots_TK is None else int((g.last_route.slots_TK[0] >= model.num_experts).sum())
                 for _, g in pairs]
    assert handed == [len(g.last_route.expert_idx_A) + z for (_, g), z in zip(pairs, zero_rows)], (handed, name, router)
    assert any(zero_rows) == (name == "longcat_flash" and router == "native")


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_size_runs_on_the_familys_fast_expert_path(name):
    """transformers' grouped expert matmul needs 16-byte strides: every expert width of every size is
    a multiple of 8 (bf16), and the tiny and small models train a step on that path in float32."""
    from harness.engine.model import SIZES

    family = FAMILIES.lookup(name)
    for size in SIZES:
        config = family.hf_config(model_config(size, family=name))
        widths = {k: v for k, v in config.items() if k.endswith(("intermediate_size", "ffn_hidden_size"))}
        assert widths and all(v % 8 == 0 for v in widths.values()), (size, widths)
    for size in ("tiny", "small"):
        model = model_config(size, family=name)
        lm = FamilyLM(model, family_router("loss_free", model, {}))
        assert (lm.hf.config._experts_implementation not in (None, "eager")) == family.grouped_experts
        lm(torch.randint(0, model.vocab_size, (2, 16))).sum().backward()


def test_a_family_runs_from_a_suite_and_its_table_is_the_proxys_plus_the_family(make_suite, tmp_path):
    suite = make_suite([{"router": "loss_free", "model.family": "qwen3_moe", "label": "qwen"},
                        {"router": "loss_free", "label": "proxy"}], base={**SMALL, "train.steps": 4})
    assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    runs = tables.read(tmp_path / "tiny").set_index("variant")
    family, proxy = runs.loc["qwen"], runs.loc["proxy"]
    assert family["model.family"] == "qwen3_moe" and pd.isna(proxy["model.family"])
    def present(row):
        return {c for c in runs.columns if not (pd.api.types.is_scalar(row[c]) and pd.isna(row[c]))}

    assert present(proxy) | {"model.family"} == present(family)  # the same columns, plus the family
    assert main(["report", str(tmp_path / "tiny")]) == 0


@pytest.mark.parametrize("settings, message", [
    ({"model.family": "llama"}, r"model.family = 'llama' is not allowed; choose one of \['harness', 'deepseek_v3'"),
    ({"model.family": "deepseek_v3", "model.num_layers": 1},
     r"has no MoE layer \(the family.s first 1 layer\(s\) are dense\): use model.num_layers >= 2"),
    ({"model.family": "mixtral", "router": "expert_choice"},
     r"needs a causal selection rule; router.selection = 'expert_choice' is not. Choose one of "
     + re.escape(str(sorted(n for n, rule in SELECTIONS.items() if rule.causal)))),
    ({"router": "native"}, r"router = 'native' runs a model family's own router: set model.family"),
])
def test_a_bad_family_exits_2_and_writes_nothing(make_suite, tmp_path, capsys, settings, message):
    import re

    variant = {"router": settings.pop("router", "loss_free")}
    suite = make_suite([variant], base=settings)
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_without_transformers_a_family_names_the_extra(make_suite, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    suite = make_suite([{"router": "loss_free", "model.family": "mixtral"}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'moe-harness[transformers]'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_family_suite_under_jobs_2_gives_the_rows_of_one_process(make_suite, tmp_path):
    """One process, then --jobs 2 (the CLI's own worker processes), one thread each: the same rows."""
    import subprocess
    import sys

    suite = make_suite([{"router": "loss_free", "model.family": "olmoe"}, {"router": "smebu", "model.family": "olmoe"},
                        *({"router": router, "model.family": family, "label": f"{router}@{family}"}
                          for family in NEW_2026 for router in ("loss_free", "native"))],
                       base={**SMALL, "train.steps": 4})
    frames = []
    for jobs, folder in (("1", "one"), ("2", "two")):
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(tmp_path / folder),
                               "--no-progress", "--threads", "1", "--jobs", jobs], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        frames.append(tables.read(tmp_path / folder / "tiny").sort_values("variant").reset_index(drop=True))
    one, two = frames
    assert set(one["model.family"]) == {"olmoe", *NEW_2026} and (one["status"] == "ok").all()
    for column in ("run_id", "val_loss", "maxvio_global", "train_loss"):
        assert one[column].tolist() == two[column].tolist(), column


def test_zero_experts_route_inside_longcat_flash_and_only_there(tiny_settings):
    """LongCat's zero-computation experts: the longcat preset swapped into LongCat-Flash trains with
    fewer FFN experts per token than k (the identity experts take the rest); a family without such
    experts refuses it, naming the one that has them."""
    settings = {**tiny_settings, **SMALL, "router": "longcat", "train.steps": 4, "train.eval_every": 2}
    record = run(resolve({**settings, "model.family": "longcat_flash"})).record
    assert record["status"] == "ok" and pd.notna(record["val_loss"])
    assert 0 < record["mean_k"] < record["model.top_k"]
    with pytest.raises(ValueError, match=r"has no zero-computation experts.*'longcat_flash'"):
        resolve({**settings, "model.family": "qwen3_moe"})


@pytest.mark.parametrize("name", FAMILIES.names())
def test_under_bf16_autocast_a_familys_experts_run_in_bf16_and_train_their_float32_weights(name, monkeypatch):
    """autocast does not cast transformers' `_grouped_mm`: the family's fused experts ran on their
    float32 weights under bf16, which on CUDA is torch's slow fallback. Without autocast nothing
    changes (float32 in, float32 out)."""
    real, seen = torch._grouped_mm, []
    monkeypatch.setattr(torch, "_grouped_mm", lambda a, b, **kw: seen.append((a.dtype, b.dtype)) or real(a, b, **kw))
    model = model_config("tiny", family=name, **{"dim": 32, "num_heads": 2, "expert_hidden": 32})
    lm = FamilyLM(model, family_router("loss_free", model, {}))
    x = torch.randint(0, model.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lm(x).float().square().mean().backward()
    experts = [p for block in sparse_blocks(lm.hf, FAMILIES.lookup(name).gate_name)
               for p in block.experts.parameters()]
    assert experts and all(p.dtype == torch.float32 and p.grad is not None for p in experts)
    if FAMILIES.lookup(name).grouped_experts:
        assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}, set(seen)
    seen.clear()
    lm(x)
    assert set(seen) <= {(torch.float32, torch.float32)}
