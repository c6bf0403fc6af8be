"""Data sources, the proxy model, metrics and single runs."""

import math

import numpy as np
import pytest
import torch

from harness.engine import metrics
from harness.suites.keys import resolve
from harness.data.corpus import load_corpus, sample_batch, validation_batches
from harness.engine.model import MoETransformer, model_config
from harness.routing import get_router_config
from harness.engine.train import lr_at, run


# --- metrics on hand-built count vectors -------------------------------------------------
def test_maxvio_uniform_is_zero_and_collapse_is_n_minus_one():
    assert metrics.maxvio([5, 5, 5, 5]) == 0.0
    assert metrics.maxvio([20, 0, 0, 0]) == pytest.approx(3.0)
    assert metrics.maxvio([6, 2, 2, 2]) == pytest.approx(6 / 3 - 1)  # n max F - 1 = 4 * .5 - 1
    np.testing.assert_allclose(metrics.maxvio([[5, 5], [4, 0]]), [0.0, 1.0])
    # a layer where nothing was routed (dynamic k with k only a ceiling) is 0, not -1, on the device too
    torch.testing.assert_close(metrics.maxvio_of(torch.tensor([[0.0, 0, 0, 0], [6, 2, 2, 2]])), torch.tensor([0.0, 1.0]))
    assert metrics.maxvio([0, 0, 0]) == 0.0


def test_other_load_metrics_on_hand_counts():
    assert metrics.normalized_entropy([3, 3, 3, 3]) == pytest.approx(1.0)
    assert metrics.normalized_entropy([9, 0, 0, 0]) == pytest.approx(0.0)
    assert metrics.dead_experts([100, 100, 0.5, 100]) == pytest.approx(0.25)
    assert metrics.coefficient_of_variation([2, 2, 2]) == 0.0
    summary = metrics.load_summary(torch.tensor([[4.0, 4, 4, 4], [16, 0, 0, 0]]))
    assert summary["maxvio"] == pytest.approx(1.5) and summary["maxvio_worst"] == pytest.approx(3.0)
    ks = metrics.experts_per_token_summary([0, 1, 2, 3, 4])
    assert ks["mean_k"] == 2.0 and ks["k_zero_frac"] == pytest.approx(0.2) and ks["k_p50"] == 2.0


def naive_nmi(experts: list[int], domains: list[int]) -> float:
    """NMI of two labelings, one sample at a time, with arithmetic-mean normalisation."""
    n = len(experts)
    pairs = {}
    for e, d in zip(experts, domains):
        pairs[e, d] = pairs.get((e, d), 0) + 1
    pe = {e: experts.count(e) / n for e in set(experts)}
    pd = {d: domains.count(d) / n for d in set(domains)}
    mutual = sum(c / n * math.log(c / n / (pe[e] * pd[d])) for (e, d), c in pairs.items())
    entropy = lambda p: -sum(v * math.log(v) for v in p.values())  # noqa: E731
    return mutual / ((entropy(pe) + entropy(pd)) / 2)


def test_specialisation_is_the_nmi_of_expert_and_domain():
    gen = np.random.default_rng(0)
    experts, domains = gen.integers(0, 4, 500).tolist(), gen.integers(0, 3, 500).tolist()
    experts = [e if gen.random() < 0.5 else d for e, d in zip(experts, domains)]  # partly informative
    joint = np.zeros((4, 3))
    np.add.at(joint, (experts, domains), 1)
    assert metrics.specialisation(joint) == pytest.approx(naive_nmi(experts, domains))
    assert metrics.specialisation(np.eye(4)[:, :4] * 10) == pytest.approx(1.0)  # expert = domain
    assert metrics.specialisation(np.ones((4, 3))) == pytest.approx(0.0)  # independent
    assert math.isnan(metrics.specialisation(np.ones((4, 1))))  # one domain: undefined
    assert metrics.specialisation(np.stack([np.eye(3), np.ones((3, 3))])) == pytest.approx(0.5)  # layer mean


def test_k_loss_correlation_is_spearman_per_layer_and_bins_by_loss():
    from scipy.stats import spearmanr

    gen = np.random.default_rng(0)
    loss = gen.random(1000)
    k = np.stack([np.round(loss * 4 + gen.random(1000)), gen.integers(0, 4, 1000)])
    rho, by_decile = metrics.k_loss_correlation(k, loss)
    assert rho == pytest.approx((spearmanr(k[0], loss).statistic + spearmanr(k[1], loss).statistic) / 2)
    assert len(by_decile) == 10 and by_decile[-1] > by_decile[0]
    assert by_decile[0] == pytest.approx(k.mean(axis=0)[loss <= np.quantile(loss, 0.1)].mean(), rel=1e-6)
    assert math.isnan(metrics.k_loss_correlation(np.full((2, 50), 2.0), gen.random(50))[0])  # top-k: k never varies


# --- data ---------------------------------------------------------------------------------
def test_stdlib_corpus_is_deterministic_bytes_with_a_fingerprint():
    corpus = load_corpus("stdlib")
    assert corpus.vocab_size == 256 and len(corpus.train) > 1_000_000 and len(corpus.val) > 10_000
    fp = corpus.fingerprint
    assert fp["data_files"] > 100 and fp["data_bytes"] == len(corpus.train) + len(corpus.val)
    load_corpus.cache_clear()
    assert load_corpus("stdlib").fingerprint == fp


def test_text_glob_splits_by_file(tmp_path):
    for i in range(30):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " * 50)
    corpus = load_corpus(str(tmp_path / "*.txt"), 0.1)
    assert corpus.fingerprint["data_files"] == 30
    assert len(corpus.train) + len(corpus.val) == corpus.fingerprint["data_bytes"] and len(corpus.val) > 0


def test_validation_documents_carry_their_domain(tmp_path):
    from harness.data.corpus import stdlib_domain

    assert stdlib_domain("email/mime/text.py") == "email" and stdlib_domain("os.py") == "os"
    corpus = load_corpus("stdlib")
    assert "email" in corpus.domains or "asyncio" in corpus.domains
    starts = torch.tensor([0, len(corpus.val) - 1])
    assert corpus.val_domains(starts).tolist() == [corpus.val_doc_domain[0], corpus.val_doc_domain[-1]]
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " * 50)
    glob = load_corpus(str(tmp_path / "*.txt"), 0.3)
    assert all(name.endswith(".txt") for name in glob.domains) and len(glob.domains) == len(glob.val_doc_starts)
    first = glob.val_doc_starts[1] if len(glob.val_doc_starts) > 1 else 0
    text = bytes(glob.val[first:first + 12].tolist()).decode()
    assert text.startswith("document ") and glob.domains[glob.val_domains(torch.tensor(first)).item()] == \
        f"doc{int(text.split()[1]):02d}.txt"


def test_single_text_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 100)
    corpus = load_corpus(str(path), 0.1)
    assert len(corpus.val) == 100 and bytes(corpus.val.tolist()) == b"abcdefghij" * 10


def test_uint16_bin_shards(tmp_path):
    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (np.arange(1000, dtype=np.uint16) + 300).tofile(tmp_path / "val.bin")
    corpus = load_corpus(str(tmp_path / "*.bin"))
    assert len(corpus.train) == 5000 and len(corpus.val) == 1000 and corpus.vocab_size == 5056
    with pytest.raises(ValueError, match="set model.vocab_size >= 5056"):
        from harness.engine.train import corpus_for
        corpus_for(resolve({"data.source": str(tmp_path / "*.bin")}))


def test_hf_source_without_datasets_names_the_extra():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'moe-harness\[hf\]'"):
            load_corpus("hf:some/dataset")
    else:
        pytest.skip("datasets is installed")


def test_validation_set_is_fixed_and_batches_are_shifted():
    tokens = torch.arange(10_000) % 256
    a = validation_batches(tokens, 3, 4, 16)
    assert len(a) == 3 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, validation_batches(tokens, 3, 4, 16)))
    x, y = sample_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


# --- model --------------------------------------------------------------------------------
@pytest.mark.parametrize("ffn, first_dense", [("moe", False), ("moe", True), ("dense", False)])
def test_model_forward_shapes(ffn, first_dense):
    cfg = model_config("tiny", ffn=ffn, first_dense=first_dense, num_shared=1)
    model = MoETransformer(cfg, get_router_config("loss_free"))
    logits = model(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256)
    assert len(model.moe_layers) == {("moe", False): 2, ("moe", True): 1, ("dense", False): 0}[(ffn, first_dense)]


def test_model_is_causal():
    model = MoETransformer(model_config("tiny"), get_router_config("softmax_topk")).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256
    torch.testing.assert_close(model(x)[0, :10], model(y)[0, :10])


def test_lr_schedule_warms_up_then_decays():
    cfg = resolve({"train.lr": 1.0, "train.warmup_steps": 10, "train.steps": 110, "train.min_lr_ratio": 0.1}).train
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


# --- runs ---------------------------------------------------------------------------------
def test_same_seed_same_losses_on_cpu(tiny_settings):
    a = run(resolve({**tiny_settings, "router": "loss_free"}))
    b = run(resolve({**tiny_settings, "router": "loss_free"}))
    assert [r["train_loss"] for r in a.steps] == [r["train_loss"] for r in b.steps]
    assert a.record["val_loss"] == b.record["val_loss"] and a.record["run_id"] == b.record["run_id"]


@pytest.mark.parametrize("router", ["loss_free", "smebu"])
def test_loss_free_balances_better_than_the_control(tiny_settings, router):
    settings = {**tiny_settings, "train.steps": 60, "train.eval_every": 60}
    control = run(resolve({**settings, "router": "sigmoid_topk"})).record
    balanced = run(resolve({**settings, "router": router, "router.bias_rate": 0.02})).record
    assert balanced["maxvio_global"] < control["maxvio_global"]


def test_grad_accum_counts_feed_the_bias_update(tiny_settings):
    result = run(resolve({**tiny_settings, "router": "dynamic_k", "train.grad_accum": 2, "router.bias_rate": 0.01}))
    rec = result.record
    assert rec["status"] == "ok" and 0 < rec["mean_k"] <= 8 and not math.isnan(rec["maxvio_batch"])
    assert rec["compute_ratio"] == pytest.approx(rec["mean_k"] / 2)


def test_simulated_expert_parallelism_and_capacity_drops_on_hand_counts():
    from harness.engine.metrics import MetricsConfig, capacity_drop_frac, cost_metrics, ep_balance

    counts_LE = torch.tensor([[8.0, 0, 4, 4, 2, 2, 6, 6], [4.0] * 8])  # 32 assignments per layer
    imbalance, efficiency = ep_balance(counts_LE, 4)  # devices: [8, 8, 4, 12] and [8, 8, 8, 8]
    assert imbalance.item() == pytest.approx((12 / 8 - 1 + 0) / 2)
    assert efficiency.item() == pytest.approx((8 / 12 + 1) / 2)
    assert ep_balance(counts_LE, 8)[0].item() == pytest.approx((8 / 4 - 1) / 2)  # one expert each: MaxVio
    # 16 tokens x k 2 over 8 experts: capacity ceil(1.0 x 4) = 4; layer 0 drops 4 + 2 + 2 of 32
    assert capacity_drop_frac(counts_LE, 16, 2, 1.0).item() == pytest.approx((8 / 32 + 0) / 2)
    assert capacity_drop_frac(counts_LE, 16, 2, 1.25).item() == pytest.approx((3 + 1 + 1) / 32 / 2)
    names = set(cost_metrics(counts_LE, 16, 2, MetricsConfig(ep_sizes=[3, 4, 8])))
    assert names == {"ep4_imbalance", "ep4_efficiency", "ep8_imbalance", "ep8_efficiency",
                     "drop_frac_cf1.0", "drop_frac_cf1.25"}  # 3 does not divide 8 experts: skipped


def test_every_run_records_what_its_load_would_cost(tiny_settings):
    record = run(resolve({**tiny_settings, "router": "loss_free"})).record
    for name in ("ep4_imbalance", "ep4_efficiency", "ep8_imbalance", "ep8_efficiency", "drop_frac_cf1.0",
                 "drop_frac_cf1.25", "maxvio_compute"):
        assert 0 <= record[name] < 8, name
    assert record["drop_frac_cf1.25"] <= record["drop_frac_cf1.0"] and record["drop_frac"] == 0  # dropless
    capped = run(resolve({**tiny_settings, "router": "switch_capacity", "router.capacity_factor": 1.0})).record
    assert 0 < capped["drop_frac"] < 1 and capped["status"] == "ok"
    assert 0 <= record["specialisation"] < 1 and "k_loss_corr" not in record  # top-k: k never varies


def test_expert_choice_reports_its_causal_loss_and_threshold_runs_their_k_loss_correlation(tiny_settings):
    chooser = run(resolve({**tiny_settings, "router": "expert_choice"}))
    record = chooser.record
    assert record["val_loss_causal"] > 0 and record["val_loss_causal"] != record["val_loss"]
    assert record["mean_k"] == pytest.approx(2.0) and record["maxvio_global"] == pytest.approx(0.0, abs=1e-6)
    assert -1 <= record["k_loss_corr"] <= 1 and len(record["k_by_loss_decile"]) == 10
    domain_rows = [r for r in chooser.loads if r["scope"].startswith("domain:")]
    assert {r["step"] for r in domain_rows} == {tiny_settings["train.steps"]}
    per_domain = {}
    for r in domain_rows:
        per_domain[r["scope"], r["layer"]] = per_domain.get((r["scope"], r["layer"]), 0) + r["load"]
    assert per_domain and all(v == pytest.approx(1.0) for v in per_domain.values())  # each domain's experts
    threshold = run(resolve({**tiny_settings, "router": "dynamic_k"})).record
    assert -1 <= threshold["k_loss_corr"] <= 1 and "val_loss_causal" not in threshold


def test_live_tensorboard_logging_reads_back(tiny_settings, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = resolve({**tiny_settings, "router": "dynamic_k", "train.log_to": ["tensorboard"]})
    record = run(cfg, log_dir=tmp_path / "logs", group="g").record
    (folder,) = (tmp_path / "logs" / "tensorboard").iterdir()
    assert folder.name == f"dynamic_k-s0-{cfg.run_id}"
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/train_loss", "train/aux_loss", "train/lr", "train/maxvio_batch", "train/mean_k",
                "train/tokens_per_s", "val/val_loss", "val/maxvio_global", "val/maxvio_layer0", "val/maxvio_layer1",
                "val/k_loss_corr"):
        assert tag in tags["scalars"], tag
    val = events.Scalars("val/val_loss")
    assert [e.step for e in val] == [3, 6] and val[-1].value == pytest.approx(record["val_loss"], rel=1e-6)
    assert [e.step for e in events.Scalars("train/train_loss")] == [2, 3, 4, 6]
    assert "val/expert_load" in tags["images"] and len(events.Images("val/expert_load")) == 2


def test_live_logging_refuses_unknown_loggers_and_names_a_missing_extra(monkeypatch):
    import importlib.util

    with pytest.raises(ValueError, match=r"train.log_to: 'mlflow' is not allowed; choose from \['tensorboard', 'wandb'\]"):
        resolve({"train.log_to": ["mlflow"]})
    with pytest.raises(ValueError, match="must be a list"):
        resolve({"train.log_to": "tensorboard"})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the optional package 'wandb': pip install 'moe-harness\[wandb\]'"):
        resolve({"train.log_to": ["wandb"]})


def test_live_wandb_logging_works_offline(tiny_settings, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default: no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = resolve({**tiny_settings, "train.log_to": ["wandb"]})
    run(cfg, log_dir=tmp_path / "logs", group="g")
    runs = list((tmp_path / "logs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_tokens_per_s_leaves_the_warm_up_steps_out_and_times_them_apart(tiny_settings, monkeypatch):
    """A first step that takes 2 s (compilation, lazy init) is in warmup_s, not in tokens/s."""
    from harness.engine import throughput

    real_step, calls = throughput.SpeedMeter.step, []

    def slow_first(self, step, seconds, cpu_seconds):
        calls.append(step)
        real_step(self, step, seconds + (2.0 if len(calls) == 1 else 0.0), cpu_seconds)

    monkeypatch.setattr(throughput.SpeedMeter, "step", slow_first)
    record = run(resolve({**tiny_settings, "router": "loss_free", "train.steps": 20})).record
    warm = 20 - throughput.SpeedMeter.WARMUP_STEPS
    assert record["warmup_s"] >= 2.0
    assert record["tokens_per_s"] == pytest.approx(
        warm * cfg_tokens(tiny_settings) / (record["train_wall_s"] - record["warmup_s"]), rel=1e-9)


def cfg_tokens(settings):
    cfg = resolve({**settings, "router": "loss_free"})
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len
