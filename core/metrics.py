"""Reconstruction metrics shared by tests and benchmarks: PSNR, SSIM, Chamfer-L1, F-score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between images in [0,1] of the same shape (mean over all pixels)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of ``[B,C,H,W]`` images in [0,1] (Gaussian window, the usual constants)."""
    x = torch.arange(window, dtype=torch.float32, device=a.device) - window // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())[None, None]
    C = a.shape[1]

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, g[..., None].expand(C, 1, window, 1), groups=C)
        return F.conv2d(t, g[:, :, None, :].expand(C, 1, 1, window), groups=C)

    a, b = a.float(), b.float()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def sample_surface(v: np.ndarray, f: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points sampled uniformly by area on a triangle mesh, ``[n,3]``."""
    rng = np.random.default_rng(seed)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    t = tri[idx]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + w[:, None] * (t[:, 2] - t[:, 0])


def _nearest(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([torch.cdist(a[i : i + chunk], b).min(dim=1).values for i in range(0, len(a), chunk)])


def chamfer_fscore(
    v_pred: np.ndarray,
    f_pred: np.ndarray,
    v_ref: np.ndarray,
    f_ref: np.ndarray,
    n: int = 20000,
    thresholds: tuple[float, ...] = (0.01, 0.02),
    seed: int = 0,
) -> dict[str, float]:
    """Chamfer-L1 (mean of both directions' mean distance) and F-scores at fractions of the
    reference bounding-box diagonal, from ``n`` surface samples of each mesh."""
    p = torch.as_tensor(sample_surface(v_pred, f_pred, n, seed), dtype=torch.float32)
    r = torch.as_tensor(sample_surface(v_ref, f_ref, n, seed + 1), dtype=torch.float32)
    d_pr, d_rp = _nearest(p, r), _nearest(r, p)
    diag = float(np.linalg.norm(v_ref.max(0) - v_ref.min(0)))
    out = {"chamfer_l1": float(0.5 * (d_pr.mean() + d_rp.mean()))}
    for t in thresholds:
        tau = t * diag
        prec = float((d_pr < tau).float().mean())
        rec = float((d_rp < tau).float().mean())
        out[f"fscore@{t:g}"] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return out
