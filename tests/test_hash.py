"""Hash selection (DeepSeek-V4's hash layers): each token's experts come from its id through the
table, whatever the scores, in training and evaluation, in the proxy and in a family; its load
metrics are recorded; a balancing controller on it exits 2; a router without the ids says so."""

import pytest
import torch

from harness import tables
from harness.cli import main
from harness.engine.model import build_model
from harness.engine.train import run
from harness.routing import Router, get_router_config
from harness.routing.selection.hash import hash_table
from harness.suites.keys import resolve

E, K = 8, 2


@pytest.mark.parametrize("table", ["round_robin", "random"])
def test_each_token_gets_the_tables_k_distinct_experts_whatever_its_scores(table):
    router = Router(16, E, K, get_router_config("hash", hash_table=table, hash_seed=3))
    ids = torch.randint(0, 1000, (64,))
    for training in (True, False):
        router.train(training)
        out = router(torch.randn(64, 16) * 10, token_ids=ids)
        chosen = out.expert_idx_A.view(64, K)
        assert torch.equal(chosen, hash_table(ids, E, K, table, 3))
        assert all(len(set(row)) == K for row in chosen.tolist())
        scores = out.scores_TE.gather(1, chosen)
        torch.testing.assert_close(out.gate_A.view(64, K), 1.5 * scores / scores.sum(1, keepdim=True))
    if table == "round_robin":  # the vocabulary spread exactly evenly: every expert takes V k / n token ids
        every = hash_table(torch.arange(400), E, K, table, 0)
        assert torch.bincount(every.flatten(), minlength=E).tolist() == [400 * K // E] * E
        assert hash_table(torch.tensor([5]), E, K, table, 0).tolist() == [[2, 3]]  # 5 k = 10 = 2 mod 8
    else:
        assert not torch.equal(hash_table(ids, E, K, table, 3), hash_table(ids, E, K, table, 4))


def test_a_router_called_without_the_ids_says_so():
    router = Router(16, E, K, get_router_config("hash"))
    with pytest.raises(ValueError, match="routes by token id, and this router was called without the tokens' ids"):
        router(torch.randn(4, 16))


@pytest.mark.parametrize("family", [None, "mixtral"])
def test_a_hash_run_routes_by_the_table_and_records_its_load(tiny_settings, family):
    settings = {**tiny_settings, "router": "hash", "train.steps": 3}
    if family:
        pytest.importorskip("transformers")
        settings.update({"model.family": family, "model.dim": 32, "model.num_heads": 2, "model.expert_hidden": 32})
    cfg = resolve(settings)
    result = run(cfg)
    assert result.record["status"] == "ok" and result.record["maxvio_global"] > 0
    model = build_model(cfg.model, cfg.router_cfg)  # the model hands every MoE layer the batch's ids
    idx = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len))
    model(idx)
    for layer in model.moe_layers:
        route = layer.last_route
        assert torch.equal(route.expert_idx_A.view(-1, cfg.model.top_k),
                           hash_table(idx.reshape(-1), cfg.model.num_experts, cfg.model.top_k, "round_robin", 0))


def test_a_balancing_controller_on_a_hash_layer_exits_2_and_writes_nothing(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "hash", "router.bias_mode": "loss_free"}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "router.selection = 'hash' routes by token id" in err and "router.bias_mode must be 'none'" in err, err
    assert not (tmp_path / "out").exists() and "Traceback" not in err
