"""Causal transformer over time, conditioned on parameters and static fields.

Each day's forcing becomes a token; the conditioning embedding (static fields + parameters) is
added to every token. Attention is causal and banded to the last `context` days with ALiBi
distance biases (Press et al. 2022), so there are no absolute positions: a long series can be
run in chunks, or stepped, with exactly the result of one call, given the last
`layers * (context - 1)` tokens as state.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        H = self.heads
        q = q.reshape(B, T, H, D // H).transpose(1, 2)
        k = k.reshape(B, T, H, D // H).transpose(1, 2)
        v = v.reshape(B, T, H, D // H).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.mlp(self.ln2(x)))


@register_model("transformer")
class ConditionedTransformer(nn.Module):
    """Pre-norm transformer encoder with a banded causal ALiBi mask; multi-output linear head."""

    tabular = False

    def __init__(self, n_forcing: int, n_cond: int, n_response: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2, context: int = 365, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError("d_model must be a multiple of heads")
        self.context = context
        self.layers = layers
        self.d_model = d_model
        self.memory = layers * (context - 1)  # tokens of history that make stepping exact
        self.tok = nn.Linear(n_forcing, d_model)
        self.cond = nn.Sequential(nn.Linear(n_cond, d_model), nn.Tanh(), nn.Linear(d_model, d_model))
        self.blocks = nn.ModuleList([_Block(d_model, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_response)
        slopes = [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]
        self.register_buffer("slopes", torch.tensor(slopes).reshape(heads, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, dims):
        return cls(dims["n_forcing"], dims["n_cond"], dims["n_response"], d_model=cfg["hidden"],
                   heads=cfg["heads"], layers=cfg["layers"], context=cfg["context"], dropout=cfg["dropout"])

    def _bias(self, T: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(T, device=device).reshape(T, 1)
        j = torch.arange(T, device=device).reshape(1, T)
        dist = (i - j).to(torch.float32)
        ok = (dist >= 0) & (dist < self.context)
        bias = -self.slopes * dist
        return torch.where(ok, bias, torch.full_like(bias, -math.inf))

    def _run(self, tokens: torch.Tensor) -> torch.Tensor:
        bias = self._bias(tokens.shape[1], tokens.device)
        h = tokens
        for blk in self.blocks:
            h = blk(h, bias)
        return self.head(self.ln(h))

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        B, T = x.shape[0], x.shape[1]
        tokens = self.tok(x) + self.cond(c).unsqueeze(1)
        if state is None:
            past = tokens[:, :0]
        else:
            past = state[0]
        outs: List[torch.Tensor] = []
        # Chunks of `context` new tokens after the state: attention memory stays O((memory+context)^2).
        start = 0
        while start < T:
            new = tokens[:, start:start + self.context]
            seq = torch.cat([past, new], dim=1)
            y = self._run(seq)
            outs.append(y[:, past.shape[1]:])
            past = seq[:, max(0, seq.shape[1] - self.memory):]
            start += self.context
        y = torch.cat(outs, dim=1) if len(outs) > 0 else tokens.new_zeros(B, 0, self.head.out_features)
        return y, (past, torch.zeros(1, device=x.device))
