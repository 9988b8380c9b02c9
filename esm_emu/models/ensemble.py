"""Deep ensemble of MLPs (`model.name: mlp_ensemble`): mean and variance from M independently trained members.

The M members are trained at once as batched weights (one einsum per layer), full batch, by
AdamW. Each member keeps its own random 1/8 of the training members out and stops at its own
best held-out loss (so members differ by start, data and stopping point). The predictive
variance is the spread of the members plus a noise term per output: the members' mean squared
error on the rows they held out (an out-of-sample estimate, not the training residual).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model


@register_model("mlp_ensemble")
class MLPEnsemble(nn.Module):
    tabular = True
    fits = True  # fitted by `fit`, not by the SGD loop

    def __init__(self, n_param: int, n_response: int, members: int = 8, hidden: int = 64, layers: int = 2,
                 fit_steps: int = 2000, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0):
        super().__init__()
        self.members, self.fit_steps, self.lr, self.wd, self.seed = members, fit_steps, lr, weight_decay, seed
        widths = [n_param] + [hidden] * layers + [n_response]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        g = torch.Generator().manual_seed(seed)
        for a, b in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter((torch.rand(members, a, b, generator=g) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(members, 1, b, generator=g) * 2 - 1) * bound))
        self.register_buffer("noise_var", torch.zeros(n_response))

    @classmethod
    def from_config(cls, cfg, dims):
        return cls(dims["n_param"], dims["n_response"], members=cfg.get("members", 8), hidden=cfg["hidden"],
                   layers=cfg["layers"], fit_steps=cfg.get("fit_steps", 2000), seed=cfg.get("seed", 0))

    def members_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's prediction: x (B,P) or (M,B,P) -> (M,B,R)."""
        h = x.unsqueeze(0).expand(self.members, -1, -1) if x.dim() == 2 else x
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < n - 1:
                h = torch.nn.functional.silu(h)
        return h

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance (members' spread + held-out noise), each (B,R), normalised units."""
        ys = self.members_forward(x)
        return ys.mean(0), ys.var(0, unbiased=False) + self.noise_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members_forward(x).mean(0)

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        x, y = x.detach().float(), y.detach().float()
        n = x.shape[0]
        g = torch.Generator().manual_seed(self.seed + 1)
        held = torch.zeros(self.members, n, dtype=torch.bool)
        for m in range(self.members):
            held[m, torch.randperm(n, generator=g)[: max(1, n // 8)]] = True
        fit_w = (~held).float().unsqueeze(-1)
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.wd)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.fit_steps)
        best = torch.full((self.members,), math.inf)
        best_state = [p.detach().clone() for p in self.parameters()]
        held_err = torch.zeros(self.members, y.shape[1])
        for step in range(self.fit_steps):
            opt.zero_grad()
            err = (self.members_forward(x) - y) ** 2
            loss = (err * fit_w).sum((1, 2)) / (fit_w.sum((1, 2)) * y.shape[1])
            loss.sum().backward()
            opt.step()
            sched.step()
            if step % 20 == 19 or step == self.fit_steps - 1:
                with torch.no_grad():
                    e = (self.members_forward(x) - y) ** 2 * held.float().unsqueeze(-1)
                    per = e.sum(1) / held.sum(1, keepdim=True).float()  # (M,R)
                    v = per.mean(1)
                    better = v < best
                    best = torch.where(better, v, best)
                    held_err[better] = per[better]
                    for p, s in zip(self.parameters(), best_state):
                        s[better] = p.detach()[better]
        with torch.no_grad():
            for p, s in zip(self.parameters(), best_state):
                p.copy_(s)
            self.noise_var.copy_(held_err.mean(0))
        return {"held_out_mse": best.tolist()}
