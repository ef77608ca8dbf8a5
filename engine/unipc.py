"""Flow-matching sigmas and the UniPC (bh1, x0 form) sampler of the official FramePack (SPEC.md section 6).

diffusers' UniPCMultistepScheduler works in log(alpha/sigma) with alpha = 1 - sigma, which is a
different solver, so this loop is written out here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma) -> x0
StepCallback = Callable[[int, torch.Tensor], None]  # (step index, x0 of that step)


class Cancelled(Exception):
    """Raised between denoising steps when the caller asked to stop."""


class Paused(Exception):
    """Raised between denoising steps on a shutdown; `state` resumes the loop where it stopped."""

    def __init__(self, state: dict | None = None):
        super().__init__("paused")
        self.state = state


def flux_mu(noisy_tokens: int, max_shift: float = 7.0) -> float:
    """Resolution-dependent shift: linear from (256, 0.5) to (4096, 1.15), capped at ln(max_shift)."""
    slope = (1.15 - 0.5) / (4096 - 256)
    return min(slope * noisy_tokens + (0.5 - slope * 256), math.log(max_shift))


def flux_sigmas(steps: int, mu: float) -> torch.Tensor:
    """sigma_i = e^mu / (e^mu + 1/t_i - 1) on t = linspace(1, 0, steps+1), in fp32; the last is 0."""
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def _unipc_update(
    x: torch.Tensor,
    outputs: list[torch.Tensor],
    sigmas: list[torch.Tensor],
    sigma: torch.Tensor,
    order: int,
    denoise: Denoiser,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One predictor-corrector step from the last `order` x0 outputs to `sigma`."""
    sigma_prev = sigmas[-1]
    m_prev = outputs[-1]
    h = torch.log(sigma_prev) - torch.log(sigma)  # lambda = -ln(sigma)

    ratios, diffs = [], []
    for j in range(1, order):
        r = ((torch.log(sigma_prev) - torch.log(sigmas[-1 - j])) / h)[0]
        ratios.append(r)
        diffs.append((outputs[-1 - j] - m_prev) / r)
    ratios.append(torch.ones((), device=h.device, dtype=h.dtype))
    rks = torch.stack(ratios)

    hh = -h[0]
    phi_1 = torch.expm1(hh)
    phi_k = phi_1 / hh - 1
    b_h = hh  # bh1
    factorial = 1
    rows, rhs = [], []
    for a in range(1, order + 1):
        rows.append(torch.pow(rks, a - 1))
        rhs.append(phi_k * factorial / b_h)
        factorial *= a + 1
        phi_k = phi_k / hh - 1 / factorial
    big_r = torch.stack(rows)
    b = torch.stack(rhs)

    if diffs:
        stacked = torch.stack(diffs, dim=1)
        if order == 2:
            rho_p = torch.tensor([0.5], device=b.device, dtype=b.dtype)
        else:
            rho_p = torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        predicted = torch.tensordot(stacked, rho_p, dims=([1], [0]))
    else:
        stacked, predicted = None, 0
    rho_c = torch.tensor([0.5], device=b.device, dtype=b.dtype) if order == 1 else torch.linalg.solve(big_r, b)

    base = (sigma / sigma_prev).view(-1, *[1] * (x.ndim - 1)) * x - phi_1 * m_prev
    x_pred = base - b_h * predicted
    m_t = denoise(x_pred, sigma)
    corrected = torch.tensordot(stacked, rho_c[:-1], dims=([1], [0])) if stacked is not None else 0
    x_next = base - b_h * (corrected + rho_c[-1] * (m_t - m_prev))
    return x_next, m_t


def sample_unipc(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    should_pause: Callable[[], bool] | None = None,
    state: dict | None = None,
) -> torch.Tensor:
    """Run n = len(sigmas)-1 steps from pure noise at sigmas[0]; returns the x0 of the last step.

    Like the official sampler, sigma_n = 0 is never evaluated: the result is the model's x0 at the
    predictor point of the last step, and the last corrector update is discarded.
    """
    steps = len(sigmas) - 1
    order = min(3, steps - 1) if steps > 1 else 1
    batch = noise.shape[0]
    x, first = noise, 0
    outputs: list[torch.Tensor] = []
    history_sigmas: list[torch.Tensor] = []
    if state is not None:  # resume: the same tensors the paused loop held
        first, x = state["step"], state["x"].to(noise.device)
        outputs = [m.to(noise.device) for m in state["outputs"]]
        history_sigmas = [s.to(noise.device) for s in state["sigmas"]]
    for i in range(first, steps):
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        if should_pause is not None and should_pause():
            raise Paused({
                "step": i, "x": x.cpu(), "outputs": [m.cpu() for m in outputs],
                "sigmas": [s.cpu() for s in history_sigmas],
            })
        sigma = sigmas[i].expand(batch)
        if i == 0:
            outputs, history_sigmas = [denoise(x, sigma)], [sigma]
        else:
            x, m_t = _unipc_update(x, outputs, history_sigmas, sigma, min(i, order), denoise)
            outputs.append(m_t)
            history_sigmas.append(sigma)
        outputs, history_sigmas = outputs[-order:], history_sigmas[-order:]
        if on_step is not None:
            on_step(i, outputs[-1])
    return outputs[-1]
