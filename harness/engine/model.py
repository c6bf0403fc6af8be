"""The proxy decoder LM: RMSNorm, RoPE, causal SDPA attention, the MoE layer as FFN.

Legend: B = batch, L = sequence length, D = width, H = heads, Dh = head width.
Size presets (`SIZES`) return a ModelConfig; a suite overrides single fields (`model.dim`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.families import HARNESS, FamilyLM
from harness.engine.families.resolve import resolve_family
from harness.engine.moe import DenseFFN, ExpertImpl, MoELayer
from harness.routing import RouterConfig


@dataclass(kw_only=True)
class ModelConfig:
    # vocabulary size (256 for the byte-level corpora; set from the data for token shards)
    vocab_size: int = 256
    # model width D
    dim: int = 64
    # transformer blocks
    num_layers: int = 2
    # attention heads (dim must be divisible by it)
    num_heads: int = 4
    # context length in tokens
    seq_len: int = 64
    # routed experts n per MoE layer
    num_experts: int = 8
    # experts per token k (the target mean for dynamic k)
    top_k: int = 2
    # hidden width of each SwiGLU expert
    expert_hidden: int = 128
    # always-on shared experts, each of width expert_hidden
    num_shared: int = 0
    # the first block gets a dense FFN (DeepSeek does this)
    first_dense: bool = False
    # moe, or a dense SwiGLU of the same active width (hidden (k + shared) x expert_hidden)
    ffn: Literal["moe", "dense"] = "moe"
    # expert matmuls: auto (grouped_mm on CUDA, a loop on CPU), grouped_mm or loop
    expert_impl: ExpertImpl = "auto"
    # RoPE base
    rope_theta: float = 10000.0
    # the architecture: harness (this file's proxy) or a transformers family (engine/families/:
    # qwen3_moe, olmoe, deepseek_v3, mixtral) built to this config's size, with the family's traits
    family: str = HARNESS

    def __post_init__(self) -> None:
        # NOTE: resolved once, here; a plain attribute, not a field: the run row and run id are the fields'
        self.family_class = resolve_family(self.family)
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "seq_len", "num_experts", "top_k", "expert_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} = {getattr(self, name)!r} must be >= 1")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"model.dim = {self.dim} must split into num_heads = {self.num_heads} heads of even width")
        if not 0 < self.rope_theta < float("inf"):
            raise ValueError(f"model.rope_theta = {self.rope_theta!r} must be a finite number > 0")
        if self.num_shared < 0:
            raise ValueError(f"model.num_shared = {self.num_shared!r} must be >= 0")
        if self.top_k > self.num_experts:
            raise ValueError(f"model.top_k = {self.top_k} must be <= model.num_experts = {self.num_experts}")
        if self.ffn not in ("moe", "dense"):
            raise ValueError(f"model.ffn = {self.ffn!r} is not allowed; choose one of ['moe', 'dense']")
        if self.expert_impl not in ("auto", "grouped_mm", "loop"):
            raise ValueError(f"model.expert_impl = {self.expert_impl!r}; choose one of ['auto', 'grouped_mm', 'loop']")

    @property
    def active_hidden(self) -> int:
        """Hidden width of the dense FFN with the same active parameters per token."""
        return self.expert_hidden * (self.top_k + self.num_shared)


SIZES: dict[str, ModelConfig] = {
    # tests: seconds on one CPU core
    "tiny": ModelConfig(dim=64, num_layers=2, num_heads=4, seq_len=64, num_experts=8, top_k=2, expert_hidden=128),
    # CPU ablations: minutes
    "small": ModelConfig(dim=128, num_layers=4, num_heads=4, seq_len=128, num_experts=16, top_k=2, expert_hidden=256),
    # one GPU
    "base": ModelConfig(dim=512, num_layers=8, num_heads=8, seq_len=512, num_experts=32, top_k=4, expert_hidden=512,
                        num_shared=1),
    # the Loss-Free paper's 1B layout: 9 MoE layers, d 1024, 2 shared + 64 routed, 6 active
    "paper_1b": ModelConfig(dim=1024, num_layers=10, num_heads=16, seq_len=1024, num_experts=64, top_k=6,
                            expert_hidden=704, num_shared=2, first_dense=True),
}


def model_config(size: str, **overrides) -> ModelConfig:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {', '.join(SIZES)}")
    return dataclasses.replace(SIZES[size], **overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = theta ** (-torch.arange(0, head_dim, 2).float() / head_dim)  # [Dh/2]
    angles = torch.outer(torch.arange(seq_len).float(), freqs)  # [L, Dh/2]
    return angles.cos(), angles.sin()


def apply_rope(x_BHLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLD.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x_BHLD)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos[:L], sin[:L]), apply_rope(k, cos[:L], sin[:L])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, L, Dh]
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, router_cfg: RouterConfig, dense: bool):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        if dense:
            self.ffn = DenseFFN(cfg.dim, cfg.active_hidden)
        else:
            self.ffn = MoELayer(cfg.dim, cfg.expert_hidden, cfg.num_experts, cfg.top_k, router_cfg,
                                cfg.num_shared, cfg.expert_impl)

    def forward(self, x, cos, sin, idx_BL=None):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x), token_ids=idx_BL)  # NOTE: a rule may route by token id (hash)


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, router_cfg: RouterConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(
            Block(cfg, router_cfg, dense=cfg.ffn == "dense" or (cfg.first_dense and i == 0))
            for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.dim // cfg.num_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=cfg.dim**-0.5)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def forward(self, idx_BL: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx_BL)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin, idx_BL)
        return self.head(self.norm(x))  # [B, L, vocab]


def build_model(cfg: ModelConfig, router_cfg: RouterConfig, native: bool = False) -> nn.Module:
    """The run's model: the proxy, or a family's model with the router swapped in (its own if `native`)."""
    if cfg.family_class is None:
        return MoETransformer(cfg, router_cfg)
    return FamilyLM(cfg, router_cfg, native=native)


def build_dense(cfg: ModelConfig, router_cfg: RouterConfig) -> nn.Module:
    """The dense twin of equal active width: the throughput yardstick, in the run's own architecture."""
    if cfg.family_class is None:
        return MoETransformer(dataclasses.replace(cfg, ffn="dense"), router_cfg)
    return FamilyLM(cfg, router_cfg, dense=True)
