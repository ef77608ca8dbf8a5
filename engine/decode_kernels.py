"""Two Triton kernels for the fast decode's GroupNorm -> SiLU -> replicate pad, on the channels-first layout.

Why: with engine/fast_decode.py's regrouping, a section's decode on the H200 still spent 1.3 of its 2.15 s
outside the convolutions (benchmarks/results/2026-12-04_vae_decode_profile_fast_h200.txt), in passes over
the same tensors: GroupNorm's sum, its deviations and their norm, the batch-norm pass, the SiLU into the
padded buffer and the edge copies. Here the statistics take one read, and the normalisation, affine, SiLU
and padding one read and one write, straight into the causal convolution's padded input.

The statistics are Welford partials per block of a group, combined with Chan's formula, all in fp32, so
they have no cancellation; the output is rounded once, where torch rounds after the norm and after the SiLU.
The kernels need CUDA and Triton; tests run them on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

STATS_BLOCK = 1024  # values per step of a statistics program
STATS_STEPS = 64  # steps per program: 64K values, a few thousand programs for a decoder's largest norm
PAD_ROWS = 2  # output rows and source columns per program of the padding kernel
PAD_COLUMNS = 512
STATS_WARPS = 4
PAD_WARPS = 4


@triton.jit
def _chan_combine(mean_a, m2_a, count_a, mean_b, m2_b, count_b):
    count = count_a + count_b
    share = tl.where(count > 0, count_b / tl.maximum(count, 1.0), 0.0)
    delta = mean_b - mean_a
    return mean_a + delta * share, m2_a + m2_b + delta * delta * count_a * share, count


@triton.jit
def _group_partials(x_ptr, mean_ptr, m2_ptr, count_ptr, length, parts,
                    BLOCK: tl.constexpr, STEPS: tl.constexpr):
    """Welford mean, sum of squared deviations and count of one block of STEPS * BLOCK values of a row."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    row_start = x_ptr + row.to(tl.int64) * length
    first = part.to(tl.int64) * (BLOCK * STEPS)
    lanes = tl.arange(0, BLOCK)
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(STEPS):
        index = first + step * BLOCK + lanes
        inside = index < length
        value = tl.load(row_start + index, mask=inside, other=0.0).to(tl.float32)
        grown = count + inside.to(tl.float32)
        delta = value - mean
        mean = mean + tl.where(inside, delta / tl.maximum(grown, 1.0), 0.0)
        m2 = m2 + tl.where(inside, delta * (value - mean), 0.0)
        count = grown
    mean, m2, count = tl.reduce((mean, m2, count), 0, _chan_combine)
    out = row * parts + part
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, m2)
    tl.store(count_ptr + out, count)


@triton.jit
def _pad_rows(x_ptr, out_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr,
              channels, per_group, frames, height, width, frames_out, height_out, rows_out, front, top,
              NORM: tl.constexpr, AFFINE: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
              UP_T: tl.constexpr, UP_H: tl.constexpr, UP_W: tl.constexpr,
              ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """Rows of out = pad(silu(norm(up(x)))) (the norm where NORM, up: diffusers' causal nearest upsampling),
    pad replicating. Each program reads whole aligned spans of source rows and writes each value where it
    lands, the edge columns included."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (n, c, t, h) of the output
    column = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)  # of the source
    row_inside = row < rows_out
    y = row % height_out
    rest = row // height_out
    t = rest % frames_out
    plane = rest // frames_out  # n * channels + c
    up_t = tl.minimum(tl.maximum(t - front, 0), 1 + (frames - 1) * UP_T - 1)
    source_t = tl.where(up_t == 0, 0, (up_t - 1) // UP_T + 1)  # the first frame is not upsampled in time
    source_y = tl.minimum(tl.maximum(y - top, 0), height * UP_H - 1) // UP_H
    source_row = ((plane * frames + source_t) * height + source_y) * width
    column_inside = column < width
    inside = row_inside[:, None] & column_inside[None, :]
    value = tl.load(x_ptr + source_row[:, None] + column[None, :], mask=inside, other=0.0)
    if NORM:
        group = plane // per_group  # n * groups + c // per_group, channels being a multiple of per_group
        scale = tl.load(rstd_ptr + group, mask=row_inside, other=0.0)
        shift = -tl.load(mean_ptr + group, mask=row_inside, other=0.0) * scale
        if AFFINE:
            channel = plane % channels
            weight = tl.load(weight_ptr + channel, mask=row_inside, other=0.0).to(tl.float32)
            bias = tl.load(bias_ptr + channel, mask=row_inside, other=0.0).to(tl.float32)
            scale = scale * weight
            shift = shift * weight + bias
        normed = value.to(tl.float32) * scale[:, None] + shift[:, None]
        value = normed * tl.sigmoid(normed)
    value = value.to(out_ptr.dtype.element_ty)
    width_out = LEFT + width * UP_W + RIGHT
    out_row = out_ptr + row[:, None] * width_out
    for copy in tl.static_range(UP_W):
        tl.store(out_row + LEFT + column[None, :] * UP_W + copy, value, mask=inside)
    for edge in tl.static_range(LEFT):
        tl.store(out_row + edge + column[None, :] * 0, value, mask=inside & (column == 0)[None, :])
    for edge in tl.static_range(RIGHT):
        tl.store(out_row + LEFT + width * UP_W + edge + (column[None, :] - width + 1), value,
                 mask=inside & (column == width - 1)[None, :])


def _pad_launch(x: torch.Tensor, pad: tuple[int, ...], factors=(1, 1, 1), norm=None, moments=None) -> torch.Tensor:
    left, right, top, bottom, front, back = pad
    n, channels, frames, height, width = x.shape
    up_t, up_h, up_w = factors
    out = x.new_empty((n, channels, 1 + (frames - 1) * up_t + front + back, height * up_h + top + bottom,
                       width * up_w + left + right))
    rows_out = out.numel() // out.shape[-1]
    grid = (triton.cdiv(rows_out, PAD_ROWS), triton.cdiv(width, PAD_COLUMNS))
    mean, rstd = moments if moments is not None else (x, x)  # unread without NORM
    affine = norm is not None and norm.affine
    weight, bias = (norm.weight, norm.bias) if affine else (mean, mean)  # unread without AFFINE
    groups = norm.num_groups if norm is not None else channels
    _pad_rows[grid](x, out, mean, rstd, weight, bias, channels, channels // groups, frames, height, width,
                    out.shape[2], out.shape[3], rows_out, front, top,
                    NORM=norm is not None, AFFINE=affine, LEFT=left, RIGHT=right, UP_T=up_t, UP_H=up_h, UP_W=up_w,
                    ROWS=PAD_ROWS, COLUMNS=PAD_COLUMNS, num_warps=PAD_WARPS)
    return out


def group_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 mean and biased variance of each row of a contiguous 2-D tensor, in one read of it."""
    count, length = rows.shape
    per_part = STATS_BLOCK * STATS_STEPS
    parts = triton.cdiv(length, per_part)
    partial = torch.empty((3, count, parts), dtype=torch.float32, device=rows.device)
    _group_partials[(count, parts)](rows, partial[0], partial[1], partial[2], length, parts,
                                    BLOCK=STATS_BLOCK, STEPS=STATS_STEPS, num_warps=STATS_WARPS)
    means, squares, counts = partial
    mean = (means * counts).sum(1) / length
    spread = squares.sum(1) + (counts * (means - mean[:, None]).square()).sum(1)
    return mean, spread / length


def norm_silu_pad(x: torch.Tensor, norm: torch.nn.GroupNorm, pad: tuple[int, ...]) -> torch.Tensor:
    """F.pad(silu(norm(x)), pad, mode="replicate") for a contiguous 5-D (N, C, T, H, W) tensor."""
    n = x.shape[0]
    mean, var = group_moments(x.view(n * norm.num_groups, -1))
    return _pad_launch(x, pad, norm=norm, moments=(mean, torch.rsqrt(var + norm.eps)))


def upsample_pad(x: torch.Tensor, factors: tuple[int, int, int], pad: tuple[int, ...]) -> torch.Tensor:
    """F.pad(up(x), pad, mode="replicate") for a contiguous 5-D tensor, up being diffusers' causal nearest
    upsampling by whole factors (engine/fast_decode.upsample_nearest)."""
    return _pad_launch(x, pad, factors=factors)
