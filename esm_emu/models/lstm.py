"""Entity-aware LSTM: parameters and static fields condition every time step.

Two forms (`ea_gate`): concatenated inputs (the conditioning embedding joins the forcing at each
step; runs on torch's fused LSTM, fast), or the EA-LSTM of Kratzert et al. (2019), whose input
gate is computed from the conditioning alone, so the "entity" controls which memory is written.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .registry import register_model


@register_model("lstm")
class EntityLSTM(nn.Module):
    """LSTM over time with a conditioning embedding; multi-output linear head."""

    tabular = False

    def __init__(self, n_forcing: int, n_cond: int, n_response: int, hidden: int = 64,
                 embed: int = 32, layers: int = 1, dropout: float = 0.0, ea_gate: bool = False):
        super().__init__()
        self.hidden = hidden
        self.layers = layers
        self.ea_gate = ea_gate
        self.embed = nn.Sequential(nn.Linear(n_cond, embed), nn.Tanh())
        if ea_gate:
            if layers != 1:
                raise ValueError("the EA-LSTM input gate form has one layer")
            self.input_gate = nn.Linear(embed, hidden)
            # forget, cell candidate, output gates from forcing and the previous hidden state
            self.w_x = nn.Linear(n_forcing + embed, 3 * hidden)
            self.w_h = nn.Linear(hidden, 3 * hidden, bias=False)
            self.lstm = None
        else:
            self.lstm = nn.LSTM(n_forcing + embed, hidden, num_layers=layers, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_response)
        self._init_forget_bias()

    def _init_forget_bias(self):
        # forget-gate bias 3 (Gers et al. 2000; as in NeuralHydrology): long memory from the start
        with torch.no_grad():
            if self.lstm is not None:
                for name, p in self.lstm.named_parameters():
                    if name.startswith("bias_ih"):
                        p[self.hidden:2 * self.hidden].fill_(3.0)
            else:
                self.w_x.bias[: self.hidden].fill_(3.0)

    @classmethod
    def from_config(cls, cfg, dims):
        return cls(dims["n_forcing"], dims["n_cond"], dims["n_response"], hidden=cfg["hidden"],
                   embed=cfg["embed"], layers=cfg["layers"], dropout=cfg["dropout"], ea_gate=cfg["ea_gate"])

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        B, T = x.shape[0], x.shape[1]
        e = self.embed(c)
        xe = torch.cat([x, e.unsqueeze(1).expand(B, T, e.shape[-1])], dim=-1)
        if state is None:
            h0 = torch.zeros(self.layers, B, self.hidden, dtype=x.dtype, device=x.device)
            state = (h0, torch.zeros_like(h0))
        lstm = self.lstm
        if lstm is not None:
            out, (h, cc) = lstm(xe, state)
        else:
            h, cc = state[0][0], state[1][0]
            i = torch.sigmoid(self.input_gate(e))
            gx = self.w_x(xe)
            outs = []
            for t in range(T):
                g = gx[:, t] + self.w_h(h)
                f, cand, o = g.chunk(3, dim=-1)
                cc = torch.sigmoid(f) * cc + i * torch.tanh(cand)
                h = torch.sigmoid(o) * torch.tanh(cc)
                outs.append(h)
            out = torch.stack(outs, dim=1)
            h, cc = h.unsqueeze(0), cc.unsqueeze(0)
        return self.head(self.drop(out)), (h, cc)
