"""Evaluation of one run: loss and load over the fixed validation set, each batch once.

Under torchrun the validation set is shared out over the ranks and every sum is all-reduced,
so each evaluation counts every validation window exactly once. Besides the loss it measures
the global load (MaxVio and friends), experts per token, specialisation by domain, the k-loss
correlation for variable-k rules and, for rules that are not causal, the loss of a causal top-k
of the same scores (docs/methods.md, "Metrics").

Legend: L = MoE layers, E = experts, D = domains, T = tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness import distributed
from harness.engine import metrics
from harness.data.corpus import validation_batches, validation_domains


@dataclass
class Totals:
    """The sums of one pass over this rank's share of the validation set."""
    loss: torch.Tensor
    counts_LE: torch.Tensor
    k_hist: torch.Tensor  # (layer, token) pairs by number of experts
    joint_LED: torch.Tensor  # assignments by layer, expert and domain
    token_loss: list = field(default_factory=list)  # variable k only: per validation token
    token_k: list = field(default_factory=list)


class Evaluator:
    """Evaluates `model` on the run's fixed validation set; `__call__` returns the metrics and the
    load rows to record."""

    def __init__(self, cfg, corpus, model, device: torch.device, amp):
        self.cfg, self.corpus, self.model, self.device, self.amp = cfg, corpus, model, device, amp
        self.layers = model.moe_layers
        rank, world = distributed.rank(), distributed.world_size()
        # NOTE: eval_batches global batches (world x batch_size windows each), shared out in
        # micro-batches: the same windows one process with the whole batch would evaluate
        val_set = validation_batches(corpus.val, cfg.train.eval_batches * world, cfg.train.batch_size,
                                     cfg.model.seq_len)
        self.total = len(val_set)
        self.val_set = val_set[rank::world]  # each rank evaluates its share, once
        domains = validation_domains(corpus, cfg.train.eval_batches * world, cfg.train.batch_size, cfg.model.seq_len)
        self.domains = domains[rank::world] if domains else None
        rule = cfg.router_cfg.rule
        self.non_causal = not rule.causal  # also evaluate a causal top-k of its scores (val_loss_causal)
        self.variable_k = rule.variable_k  # correlate a token's k with its loss (k_loss_corr)

    @torch.no_grad()
    def __call__(self, step: int, batch_counts_LE: torch.Tensor | None) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
        """The evaluation's metrics, and (scope, [L, E] counts) for the load rows of this step: the
        validation set's, the last training step's (`batch_counts_LE`), and at the end each domain's."""
        self.model.eval()
        totals = self.validation_pass()
        out = {"val_loss": distributed.all_sum_(totals.loss).item() / self.total}
        if self.non_causal:
            out["val_loss_causal"] = self.causal_val_loss()
        self.model.train()
        for total in (totals.counts_LE, totals.k_hist, totals.joint_LED):
            distributed.all_sum_(total)
        if not self.layers:
            return out, []
        return self.load_metrics(out, totals, step, batch_counts_LE)

    def validation_pass(self) -> Totals:
        num_experts, num_layers = self.cfg.model.num_experts, len(self.layers)
        num_domains = len(self.corpus.domains) if self.domains else 0
        totals = Totals(torch.zeros((), dtype=torch.float64, device=self.device),
                        torch.zeros(num_layers, num_experts, device=self.device),
                        torch.zeros(num_experts + 1, dtype=torch.long, device=self.device),
                        torch.zeros(num_layers, num_experts * num_domains, dtype=torch.long, device=self.device))
        for b, (x, y) in enumerate(self.val_set):
            loss_T = self.token_loss(x, y)
            totals.loss += loss_T.mean()
            domain_T = self.domains[b].to(self.device).flatten() if num_domains else None
            k_LT = [self.count_layer(i, layer.last_route, x.numel(), totals, domain_T, num_domains)
                    for i, layer in enumerate(self.layers)]
            if self.variable_k and self.layers:
                totals.token_loss.append(loss_T)
                totals.token_k.append(torch.stack(k_LT))
        return totals

    @staticmethod
    def count_layer(i: int, route, num_tokens: int, totals: Totals, domain_T, num_domains: int) -> torch.Tensor:
        """Add one layer's routing of one batch to the totals; returns each token's number of experts."""
        num_experts = totals.counts_LE.shape[1]
        totals.counts_LE[i] += route.counts_E
        k_T = torch.bincount(route.token_idx_A, minlength=num_tokens)
        totals.k_hist += torch.bincount(k_T, minlength=num_experts + 1)
        if num_domains:
            totals.joint_LED[i] += torch.bincount(route.expert_idx_A * num_domains + domain_T[route.token_idx_A],
                                                  minlength=num_experts * num_domains)
        return k_T

    def load_metrics(self, out: dict, totals: Totals, step: int,
                     batch_counts_LE: torch.Tensor | None) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
        counts_LE = totals.counts_LE.cpu()
        summary = metrics.load_summary(counts_LE)
        out.update({"maxvio_global": summary["maxvio"], "maxvio_global_worst": summary["maxvio_worst"],
                    "cv_global": summary["cv"], "dead_experts": summary["dead_experts"],
                    "entropy_global": summary["entropy"]})
        hist = totals.k_hist.cpu()
        out.update(metrics.experts_per_token_summary(torch.repeat_interleave(torch.arange(len(hist)), hist)))
        out["k_hist"] = (hist.float() / hist.sum()).tolist()  # fraction of (layer, token) pairs using k experts
        num_domains = len(self.corpus.domains) if self.domains else 0
        joint_LED = totals.joint_LED.view(len(self.layers), self.cfg.model.num_experts, num_domains).cpu()
        out["specialisation"] = metrics.specialisation(joint_LED) if num_domains else math.nan
        if totals.token_loss:
            loss_T = distributed.all_cat(torch.cat(totals.token_loss)).cpu()
            k_LT = distributed.all_cat(torch.cat(totals.token_k, dim=1).T.contiguous()).T.cpu()
            out["k_loss_corr"], out["k_by_loss_decile"] = metrics.k_loss_correlation(k_LT, loss_T)
        loads = [("global", counts_LE)] + ([("batch", batch_counts_LE.cpu())] if batch_counts_LE is not None else [])
        if num_domains and step == self.cfg.train.steps:  # NOTE: the final evaluation only: L E D rows
            loads += [(f"domain:{name}", joint_LED[:, :, d].float()) for d, name in enumerate(self.corpus.domains)
                      if joint_LED[:, :, d].sum()]
        return out, loads

    def token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[B L] loss of each validation token."""
        with self.amp:  # NOTE: the bare model: no DDP hooks, and ranks may hold unequal shares
            logits = self.model(x.to(self.device))
        return F.cross_entropy(logits.float().flatten(0, 1), y.to(self.device).flatten(), reduction="none")

    @torch.no_grad()
    def causal_val_loss(self) -> float:
        """Validation loss with each non-causal router replaced by a causal top-k of its scores."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for layer in self.layers:
            layer.router.causal_topk = True
        try:
            for x, y in self.val_set:
                loss_sum += self.token_loss(x, y).mean()
        finally:
            for layer in self.layers:
                layer.router.causal_topk = False
        return distributed.all_sum_(loss_sum).item() / self.total
