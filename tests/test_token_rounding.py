"""Token rounding (SonicMoE): in training each expert's top-k count becomes a multiple of the tile,
filled with its next-best tokens or cut to its best; at evaluation the route is plain top-k; a
tile of 0 exits 2 naming the allowed values and writes nothing."""

import pytest
import torch

from harness.cli import main
from harness.engine.train import run
from harness.routing import Router, get_router_config
from harness.suites.keys import resolve

E, T, K = 4, 40, 2


def logit_router(**settings) -> Router:
    router = Router(E, E, K, get_router_config("token_rounding", **settings))
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    return router


@pytest.mark.parametrize("mode", ["nearest", "up", "down"])
def test_each_experts_training_count_is_a_multiple_of_the_tile_filled_or_cut_by_score(mode):
    torch.manual_seed(0)
    router = logit_router(tr_tile=8, tr_mode=mode)
    logits = torch.randn(T, E)
    top = torch.zeros(T, E, dtype=torch.bool).scatter_(1, logits.topk(K, dim=1).indices, True)
    counts = top.sum(0)
    out = router(logits)
    kept = torch.zeros(T, E, dtype=torch.bool)
    kept[out.token_idx_A, out.expert_idx_A] = True
    want = {"nearest": (counts + 4) // 8 * 8, "up": (counts + 7) // 8 * 8, "down": counts // 8 * 8}[mode].clamp_min(8)
    assert kept.sum(0).tolist() == want.tolist() == out.counts_E.long().tolist()
    scores = torch.softmax(logits, -1)
    for e in range(E):
        mine, others = scores[top[:, e], e], scores[~top[:, e], e]
        if want[e] >= counts[e]:  # every top-k token kept, then the best of the others
            assert kept[top[:, e], e].all()
            assert set(torch.nonzero(kept[:, e] & ~top[:, e]).flatten().tolist()) == set(
                torch.nonzero(~top[:, e]).flatten()[others.topk(int(want[e] - counts[e])).indices].tolist())
        else:  # only the best of its top-k tokens
            assert set(torch.nonzero(kept[:, e]).flatten().tolist()) == set(
                torch.nonzero(top[:, e]).flatten()[mine.topk(int(want[e])).indices].tolist())
    assert (scores[out.token_idx_A, out.expert_idx_A] > 0).all()
    router.eval()
    evaluated = router(logits)
    assert torch.equal(evaluated.expert_idx_A.view(T, K).sort(1).values, logits.topk(K, dim=1).indices.sort(1).values)


def test_an_expert_with_tokens_keeps_at_least_one_tile():
    from harness.routing.selection.token_rounding import rounded_counts

    counts = torch.tensor([0.0, 1.0, 3.0, 4.0, 12.0, 20.0])
    assert rounded_counts(counts, 8, "nearest", 100).tolist() == [0, 8, 8, 8, 16, 24]
    assert rounded_counts(counts, 8, "down", 100).tolist() == [0, 8, 8, 8, 8, 16]
    assert rounded_counts(counts, 8, "up", 10).tolist() == [0, 8, 8, 8, 10, 10]  # at most every token


def test_token_rounding_trains_under_a_bias_controller(tiny_settings):
    record = run(resolve({**tiny_settings, "router": "token_rounding", "router.bias_mode": "loss_free",
                          "router.bias_rate": 1e-2, "router.tr_tile": 8, "train.steps": 4})).record
    assert record["status"] == "ok" and record["router.tr_tile"] == 8
    assert max(map(abs, record["expert_bias"][0])) > 0


def test_a_tile_of_0_exits_2_with_the_allowed_values_and_writes_nothing(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "token_rounding", "router.tr_tile": 0}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "router.tr_tile = 0 must be a finite number in [1, inf]" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
