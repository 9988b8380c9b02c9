"""KGSSL-style inverse model (Ghosh et al., KDD 2022): a bidirectional-LSTM encoder of one-year
(forcing, response) windows pooled to an entity embedding, trained with reconstruction,
NT-Xent contrastive and masked pseudo-inverse losses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KGSSLConfig:
    """The ``inverse.kgssl`` section (defaults as in esm_emu.inverse.config.KGSSL)."""

    embedding: int = 16
    hidden: int = 32
    window_days: int = 365
    pool_days: int = 5  # daily values averaged to pool_days before the encoder (speed; one year = 73 steps)
    temperature: float = 0.1
    w_recon: float = 1.0
    w_forcing: float = 0.1
    w_contrast: float = 0.5
    w_inverse: float = 1.0
    steps: int = 300
    batch: int = 64
    lr: float = 3e-3
    min_obs_fraction: float = 0.5  # windows with less observed response are not used
    ppe_samples: int = 4  # forward-model PPE samples per entity for pretraining (inversion.ppe_samples)
    noise: float = 0.02  # noise added to those PPE responses, fraction of their std


class Standardizer:
    """Per-variable mean/std over the last axis; responses may hold NaN."""

    def __init__(self, x: torch.Tensor):
        flat = x.reshape(-1, x.shape[-1])
        self.mean = torch.nanmean(flat, 0)
        self.std = torch.sqrt(torch.nanmean((flat - self.mean) ** 2, 0)).clamp_min(1e-12)

    def __call__(self, x):
        return (x - self.mean) / self.std


def windows(x: torch.Tensor, window: int, pool: int) -> torch.Tensor:
    """(N, T, C) -> (N, W, window/pool, C): consecutive windows, averaged over pool days (NaN-aware)."""
    N, T, C = x.shape
    W = T // window
    if W == 0:
        raise ValueError(f"series of {T} steps is shorter than one window of {window}")
    steps = window // pool
    x = x[:, : W * window].reshape(N, W, window, C)[:, :, : steps * pool].reshape(N, W, steps, pool, C)
    return torch.nanmean(x, dim=3)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): a[i] and b[i] are positives, every other row of the batch a negative."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


class KGSSL(nn.Module):
    """Encoder, decoder, projection and pseudo-inverse heads."""

    def __init__(self, n_forcing: int, n_response: int, n_params: int, cfg: KGSSLConfig):
        super().__init__()
        self.cfg = cfg
        E, H = cfg.embedding, cfg.hidden
        self.encoder = nn.LSTM(n_forcing + 2 * n_response, H, batch_first=True, bidirectional=True)
        self.to_z = nn.Linear(2 * H, E)
        self.proj = nn.Sequential(nn.Linear(E, E), nn.ReLU(), nn.Linear(E, E))
        self.decoder = nn.LSTM(n_forcing + E, H, batch_first=True)
        self.dec_out = nn.Linear(H, n_response)
        self.forcing_head = nn.Linear(E, n_forcing)  # the window's mean forcing (climate) from z
        self.inverse_head = nn.Sequential(nn.Linear(E, 2 * H), nn.ReLU(), nn.Linear(2 * H, n_params))

    def embed(self, xf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, L, F) standardized forcing and (B, L, R) standardized response with NaN gaps -> (B, E)."""
        m = torch.isfinite(y)
        h, _ = self.encoder(torch.cat([xf, torch.nan_to_num(y), m.float()], -1))
        return self.to_z(h.mean(1))

    def decode(self, z: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        h, _ = self.decoder(torch.cat([xf, z[:, None].expand(-1, xf.shape[1], -1)], -1))
        return self.dec_out(h)

    def theta_unit(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.inverse_head(z))


class KGSSLData:
    """Windows of standardized (forcing, response) with the known parameters (unit scale) and mask."""

    def __init__(self, forcing, response, theta_unit, theta_mask, cfg: KGSSLConfig, fs=None, rs=None):
        self.fs = fs or Standardizer(forcing)
        self.rs = rs or Standardizer(response)
        self.xf = windows(self.fs(forcing), cfg.window_days, cfg.pool_days)
        self.y = windows(self.rs(response), cfg.window_days, cfg.pool_days)
        self.theta = torch.nan_to_num(theta_unit)
        self.mask = theta_mask.float()
        self.valid = (torch.isfinite(self.y).float().mean((2, 3)) >= cfg.min_obs_fraction)  # (N, W)
        # forcing window means (climate) for the forcing-reconstruction loss
        self.fmean = self.xf.mean(2)

    def entities_with(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.valid.sum(1).numpy() >= k)


def _pick_windows(valid: torch.Tensor, idx: np.ndarray, rng: np.random.Generator, distinct: bool):
    w1, w2 = [], []
    for i in idx:
        ok = np.flatnonzero(valid[i].numpy())
        a = rng.choice(ok, 2, replace=not (distinct and len(ok) >= 2))
        w1.append(a[0])
        w2.append(a[1])
    return torch.as_tensor(w1), torch.as_tensor(w2)


def train_kgssl(data: KGSSLData, n_params: int, cfg: KGSSLConfig, seed: int = 0, progress=None):
    """Train the KGSSL model on all entities; returns (model, history of the losses)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = KGSSL(data.xf.shape[-1], data.y.shape[-1], n_params, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    multi = data.entities_with(2)
    pool = multi if len(multi) >= 4 else data.entities_with(1)
    hist = {"loss": [], "recon": [], "contrast": [], "inverse": []}
    for _ in range(cfg.steps):
        idx = rng.choice(pool, min(cfg.batch, len(pool)), replace=False)
        w1, w2 = _pick_windows(data.valid, idx, rng, distinct=True)
        ti = torch.as_tensor(idx)
        x1, y1 = data.xf[ti, w1], data.y[ti, w1]
        x2, y2 = data.xf[ti, w2], data.y[ti, w2]
        z1, z2 = model.embed(x1, y1), model.embed(x2, y2)
        recon = 0.0
        for z, x, y in ((z1, x1, y1), (z2, x2, y2)):
            m = torch.isfinite(y)
            recon = recon + ((model.decode(z, x) - torch.nan_to_num(y)) ** 2)[m].mean() / 2
        frec = (((model.forcing_head(z1) - data.fmean[ti, w1]) ** 2).mean()
                + ((model.forcing_head(z2) - data.fmean[ti, w2]) ** 2).mean()) / 2
        contrast = nt_xent(model.proj(z1), model.proj(z2), cfg.temperature)
        mk = data.mask[ti]
        inv = torch.zeros(())
        if mk.sum() > 0:
            err = (model.theta_unit(z1) - data.theta[ti]) ** 2 + (model.theta_unit(z2) - data.theta[ti]) ** 2
            inv = (err * mk).sum() / (2 * mk.sum())
        loss = cfg.w_recon * recon + cfg.w_forcing * frec + cfg.w_contrast * contrast + cfg.w_inverse * inv
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, v in (("loss", loss), ("recon", recon), ("contrast", contrast), ("inverse", inv)):
            hist[k].append(float(torch.as_tensor(v).detach()))
        if progress is not None:
            progress.update(1)
    return model.eval(), hist


@torch.no_grad()
def embed_entities(model: KGSSL, data: KGSSLData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean embedding and mean pseudo-inverse theta (unit scale) over each entity's valid windows.

    Returns (z (N,E), theta_unit (N,P), has (N,) bool); entities without a valid window get zeros.
    """
    N, W = data.valid.shape
    z = model.embed(data.xf.reshape(N * W, *data.xf.shape[2:]), data.y.reshape(N * W, *data.y.shape[2:]))
    z = z.reshape(N, W, -1)
    th = model.theta_unit(z)
    v = data.valid.float()[..., None]
    cnt = v.sum(1).clamp_min(1)
    return (z * v).sum(1) / cnt, (th * v).sum(1) / cnt, data.valid.any(1)
