"""Sigma schedule and the UniPC sampler loop (SPEC.md section 6)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.unipc import Cancelled, flux_mu, flux_sigmas, sample_unipc

SPEC_GRID = [
    1, .9941, .9877, .9809, .9735, .9655, .9568, .9474, .9370, .9256, .9130, .8991, .8835, .8660, .8462,
    .8235, .7975, .7671, .7313, .6885, .6364, .5714, .4884, .3784, .2258, 0,
]


def test_default_grid_matches_spec():
    noisy_tokens = 9 * 80 * 76 // 4  # 640x608, window 9
    mu = flux_mu(noisy_tokens)
    assert mu == pytest.approx(math.log(7))
    sigmas = flux_sigmas(25, mu)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 26
    assert sigmas.tolist() == pytest.approx(SPEC_GRID, abs=6e-5)


def test_mu_is_linear_below_saturation():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)
    # Window 5 at 640 stays below the cap, window 6 reaches it.
    assert flux_mu(5 * 80 * 76 // 4) < math.log(7) <= flux_mu(6 * 80 * 76 // 4) + 1e-12


class CountingDenoiser:
    """x0 = target, whatever x is: an exact sampler must land on the target."""

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.target.clone()


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 25])
def test_sampler_makes_one_model_call_per_step_and_returns_last_x0(steps):
    target = torch.randn(1, 16, 3, 4, 4)
    denoise = CountingDenoiser(target)
    seen = []
    result = sample_unipc(denoise, torch.randn_like(target), flux_sigmas(steps, 1.0), lambda i, x0: seen.append(i))
    assert denoise.calls == steps
    assert seen == list(range(steps))
    assert torch.equal(result, target)


def test_sampler_follows_a_linear_flow_exactly():
    """For a true flow x_t = (1-s)x0 + s*noise with a perfect denoiser, x stays on the path."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((1, 4, 2, 3, 3), generator=gen)
    noise = torch.randn((1, 4, 2, 3, 3), generator=gen)
    states = []

    def denoise(x, sigma):
        s = sigma.view(-1, 1, 1, 1, 1)
        implied_noise = (x - (1 - s) * x0) / s
        states.append((x - ((1 - s) * x0 + s * implied_noise)).abs().max().item())
        return x0.clone()

    out = sample_unipc(denoise, noise, flux_sigmas(10, 1.5))
    assert torch.allclose(out, x0)
    assert max(states) < 1e-5


def _spec_reference(denoise, x, sigmas):
    """SPEC.md section 6, transcribed literally in float64 numpy: the independent reference."""
    import numpy as np

    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    order = min(3, n - 1)
    m_list, s_list = [denoise(x, sig[0])], [sig[0]]
    for i in range(1, n):
        k, t = min(i, order), sig[i]
        p, m_p = s_list[-1], m_list[-1]
        h = np.log(p / t)
        r, d = [], []
        for j in range(1, k):
            r_j = np.log(p / s_list[-1 - j]) / h
            r.append(r_j)
            d.append((m_list[-1 - j] - m_p) / r_j)
        r.append(1.0)
        u = -h
        phi = np.expm1(u)
        big_b, c, f = u, phi / u - 1, 1
        rows, b = [], []
        for a in range(1, k + 1):
            rows.append([rr ** (a - 1) for rr in r])
            b.append(c * f / big_b)
            f *= a + 1
            c = c / u - 1 / f
        rows, b = np.array(rows), np.array(b)
        rho_p = [] if k == 1 else ([0.5] if k == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]))
        rho_c = [0.5] if k == 1 else np.linalg.solve(rows, b)
        base = (t / p) * x - phi * m_p
        x_pred = base - big_b * sum(rp * dj for rp, dj in zip(rho_p, d, strict=False))
        m_t = denoise(x_pred, t)
        x = base - big_b * (sum(rc * dj for rc, dj in zip(rho_c[:-1], d, strict=True)) + rho_c[-1] * (m_t - m_p))
        m_list, s_list = (m_list + [m_t])[-order:], (s_list + [t])[-order:]
    return m_list[-1]


@pytest.mark.parametrize("steps", [2, 3, 5, 25])
def test_sampler_matches_a_literal_transcription_of_the_spec(steps):
    import numpy as np

    rng = np.random.default_rng(steps)
    noise = rng.standard_normal((1, 2, 2, 3, 3))
    anchor = rng.standard_normal((1, 2, 2, 3, 3))

    def nonlinear_np(x, sigma):
        return 0.6 * np.tanh(x) + 0.3 * anchor * sigma + 0.1 * sigma**2

    def nonlinear_torch(x, sigma):
        s = sigma.view(-1, 1, 1, 1, 1).double()
        return 0.6 * torch.tanh(x) + 0.3 * torch.from_numpy(anchor) * s + 0.1 * s**2

    sigmas = flux_sigmas(steps, math.log(7))
    expected = _spec_reference(nonlinear_np, noise, sigmas)
    got = sample_unipc(nonlinear_torch, torch.from_numpy(noise), sigmas.double())
    assert np.allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    # and the update is not a no-op: a first-order-only loop would differ
    assert not np.allclose(expected, nonlinear_np(noise, 0.0))


def test_cancel_stops_before_the_next_model_call():
    target = torch.randn(1, 16, 2, 2, 2)
    denoise = CountingDenoiser(target)
    asked = {"stop": False}

    def on_step(i, x0):
        if i == 2:
            asked["stop"] = True

    with pytest.raises(Cancelled):
        sample_unipc(denoise, torch.randn_like(target), flux_sigmas(25, 1.0), on_step, lambda: asked["stop"])
    assert denoise.calls == 3  # steps 0, 1 and 2; nothing after the request
