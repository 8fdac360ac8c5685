"""Minority score of any image, real or generated (Um, Lee & Ye, "Don't Play Favorites", ICLR 2024, §4.1).

``score(x0) = E_eps[ D(x0, x0_hat(sqrt(ab_t) x0 + sqrt(1-ab_t) eps, t)) ]`` at a fixed t (0.6 T by
default, the reference's ``perturb_t = 60`` of 100), averaged over ``n_iter`` draws. A high score means
the denoiser pulls the image toward the majority: a minority image. With ``D = squared L2`` it is
proportional to the noise-prediction error. Per-sample generators make the score of image k
independent of the batch it is scored in.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .guidance import Distance
from .sample import _eval, _padded, generators, per_sample_randn
from .schedule import NoiseSchedule

SCORE_T_FRACTION = 0.6  # perturb_t = 60 on a 100-step grid
SCORE_N_ITER = 5        # Monte-Carlo draws (reference default)


def squared_l2(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


@torch.no_grad()
def minority_score(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, labels: Tensor | None,
                   seeds: Sequence[int], *, t_fraction: float = SCORE_T_FRACTION, n_iter: int = SCORE_N_ITER,
                   distance: Distance = squared_l2, num_classes: int | None = None) -> Tensor:
    """Scores ``[B]`` of images ``x0 [B,C,H,W]`` in [-1,1]; ``labels=None`` scores unconditionally."""
    if len(seeds) != x0.shape[0]:
        raise ValueError(f"{x0.shape[0]} images but {len(seeds)} seeds")
    p = next(model.parameters())
    x0 = x0.to(device=p.device, dtype=p.dtype)
    C = num_classes if num_classes is not None else model.spec.num_classes
    y = (torch.full((x0.shape[0],), C, dtype=torch.long, device=x0.device) if labels is None
         else labels.to(device=x0.device, dtype=torch.long))
    t = torch.full((x0.shape[0],), min(int(t_fraction * schedule.T), schedule.T - 1), device=x0.device, dtype=torch.long)
    gens = generators(seeds, x0.device)
    total = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
    with _eval(model):
        for _ in range(n_iter):
            eps = per_sample_randn(gens, x0.shape[1:], x0.device, x0.dtype)
            x_t = schedule.q_sample(x0, t, eps)
            x0_hat = schedule.eps_to_x0(x_t, t, _padded(model, x_t, t, y))
            total += distance(x0, x0_hat)
    return total / n_iter


def minority_scores_batched(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, labels: Tensor | None,
                            seeds: Sequence[int], batch_size: int = 256, **kw) -> Tensor:
    """:func:`minority_score` over a whole dataset in chunks (rank a dataset by it)."""
    out = []
    for a in range(0, x0.shape[0], batch_size):
        lab = None if labels is None else labels[a:a + batch_size]
        out.append(minority_score(model, schedule, x0[a:a + batch_size], lab, list(seeds[a:a + batch_size]), **kw).cpu())
    return torch.cat(out) if out else torch.empty(0)
