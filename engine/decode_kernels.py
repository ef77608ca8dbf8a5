"""Triton kernels for the fast decode's resnets and upsamplers, on the channels-first layout.

Why: with engine/fast_decode.py's regrouping, a section's decode on the H200 still spent 1.3 of its 2.15 s
outside the convolutions (benchmarks/results/2026-12-04_vae_decode_profile_fast_h200.txt), in passes over
the same tensors: GroupNorm's sum, its deviations and their norm, the batch-norm pass, the SiLU into the
padded buffer, the edge copies, the upsampling copies and cuDNN's separate bias additions. Here:

- a norm's statistics take one read (per-lane Welford, merged by Chan's formula, fp32: no cancellation) and
  one tiny launch to merge each group's partials;
- its normalisation, affine and SiLU one read and one write, straight into the causal convolution's
  replicate-padded input; the same padding kernel upsamples straight into the upsamplers' padded input;
- a resnet's convolutions run without bias: conv1's is added inside norm2, conv2's and the shortcut's in one
  bias-and-residual pass.

The output is rounded once, where torch rounds after the norm and after the SiLU. The kernels need CUDA and
Triton; tests run them on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

STATS_BLOCK = 1024  # values per step of a statistics program
STATS_STEPS = 64  # steps per program: 64K values, a few thousand programs for a decoder's largest norm
PAD_ELEMENTS = 1024  # values per program of the padding kernel: rows x source columns
PAD_MAX_COLUMNS = 1024
ADD_BLOCK = 2048  # values per program of the bias-and-residual sum
WARPS = 4
# Triton compiles a kernel again for each new pattern of its integer arguments (divisible by 16 or not):
# the decoder's tile widths made the low plan's fresh warm-up 39 s longer. Only the sizes that set a load's
# alignment (a plane's size, a row's width) are worth a compile of their own.
_ALIGNMENT_ONLY = {"do_not_specialize": ["channels", "per_group", "frames", "height", "frames_out", "height_out",
                                         "rows_out", "front", "top", "parts", "length"]}
MERGE_BLOCK = 256  # partial statistics per step of a group's merge


@triton.jit(**_ALIGNMENT_ONLY)
def _plane_partials(x_ptr, bias_ptr, mean_ptr, m2_ptr, count_ptr, plane_size, channels, parts,
                    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    """Welford mean, sum of squared deviations and count of STEPS * BLOCK values of one channel's plane
    (plus the channel's bias where HAS_BIAS: the norm's input is a convolution's output before its bias)."""
    plane = tl.program_id(0)
    part = tl.program_id(1)
    plane_start = x_ptr + plane.to(tl.int64) * plane_size
    first = part.to(tl.int64) * (BLOCK * STEPS)
    lanes = tl.arange(0, BLOCK)
    shift = 0.0
    if HAS_BIAS:
        shift = tl.load(bias_ptr + plane % channels).to(tl.float32)
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(STEPS):
        index = first + step * BLOCK + lanes
        inside = index < plane_size
        value = tl.load(plane_start + index, mask=inside, other=0.0).to(tl.float32) + shift
        grown = count + inside.to(tl.float32)
        delta = value - mean
        mean = mean + tl.where(inside, delta / tl.maximum(grown, 1.0), 0.0)
        m2 = m2 + tl.where(inside, delta * (value - mean), 0.0)
        count = grown
    # the lanes' statistics into one, by the parallel axis theorem (Chan's pairwise formula, all at once)
    total = tl.sum(count, axis=0)
    lanes_mean = tl.sum(count * mean, axis=0) / tl.maximum(total, 1.0)
    deviation = mean - lanes_mean
    m2 = tl.sum(m2, axis=0) + tl.sum(count * deviation * deviation, axis=0)
    mean, count = lanes_mean, total
    out = plane * parts + part
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, m2)
    tl.store(count_ptr + out, count)


@triton.jit(**_ALIGNMENT_ONLY)
def _merge_group(mean_ptr, m2_ptr, count_ptr, group_mean_ptr, group_rstd_ptr, length, eps,
                 BLOCK: tl.constexpr):
    """One group's mean and 1 / sqrt(variance + eps) from its `length` consecutive partial statistics (Chan's
    formula again), in one launch where torch's ops took a dozen tiny ones a norm."""
    group = tl.program_id(0).to(tl.int64)
    first = group * length
    lanes = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    weighted = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, length, BLOCK):
        inside = start + lanes < length
        count = tl.load(count_ptr + first + start + lanes, mask=inside, other=0.0)
        total += count
        weighted += count * tl.load(mean_ptr + first + start + lanes, mask=inside, other=0.0)
    length_total = tl.sum(total, axis=0)
    mean = tl.sum(weighted, axis=0) / length_total
    spread = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, length, BLOCK):
        inside = start + lanes < length
        count = tl.load(count_ptr + first + start + lanes, mask=inside, other=0.0)
        deviation = tl.load(mean_ptr + first + start + lanes, mask=inside, other=0.0) - mean
        spread += tl.load(m2_ptr + first + start + lanes, mask=inside, other=0.0) + count * deviation * deviation
    var = tl.sum(spread, axis=0) / length_total
    tl.store(group_mean_ptr + group, mean)
    tl.store(group_rstd_ptr + group, 1.0 / tl.sqrt(var + eps))


@triton.jit(**_ALIGNMENT_ONLY)
def _add_bias_residual(h_ptr, bias_ptr, residual_ptr, plane_size, channels,
                       HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    """h += bias[c] + residual, in place, for one block of one channel's plane."""
    plane = tl.program_id(0)
    index = plane.to(tl.int64) * plane_size + tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK) < plane_size
    total = tl.load(h_ptr + index, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        total += tl.load(bias_ptr + plane % channels).to(tl.float32)
    if HAS_RESIDUAL:
        total += tl.load(residual_ptr + index, mask=inside, other=0.0).to(tl.float32)
    tl.store(h_ptr + index, total.to(h_ptr.dtype.element_ty), mask=inside)


@triton.jit(**_ALIGNMENT_ONLY)
def _pad_rows(x_ptr, out_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, in_bias_ptr,
              channels, per_group, frames, height, width, frames_out, height_out, rows_out, front, top,
              NORM: tl.constexpr, AFFINE: tl.constexpr, IN_BIAS: tl.constexpr,
              LEFT: tl.constexpr, RIGHT: tl.constexpr, UP_T: tl.constexpr, UP_H: tl.constexpr, UP_W: tl.constexpr,
              ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """Rows of out = pad(silu(norm(up(x) + in_bias))) (the norm and SiLU where NORM, the per-channel in_bias
    where IN_BIAS, up: diffusers' causal nearest upsampling), pad replicating. Each program reads whole
    aligned spans of source rows and writes each value where it lands, the edge columns included."""
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
        channel = plane % channels
        if IN_BIAS:  # (x + b - mean) * rstd
            shift += tl.load(in_bias_ptr + channel, mask=row_inside, other=0.0).to(tl.float32) * scale
        if AFFINE:
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


def _pad_blocks(width: int) -> tuple[int, int]:
    """Rows and source columns of a padding program: a whole source row where it fits (the fastest on the H200,
    benchmarks/results/2026-12-04_decode_kernels_blocks_h200.jsonl)."""
    columns = min(triton.next_power_of_2(width), PAD_MAX_COLUMNS)
    return max(1, PAD_ELEMENTS // columns), columns


def _pad_launch(x: torch.Tensor, pad: tuple[int, ...], factors=(1, 1, 1), norm=None, moments=None,
                in_bias=None) -> torch.Tensor:
    x = x.contiguous()  # the kernels index the channels-first layout
    left, right, top, bottom, front, back = pad
    n, channels, frames, height, width = x.shape
    up_t, up_h, up_w = factors
    out = x.new_empty((n, channels, 1 + (frames - 1) * up_t + front + back, height * up_h + top + bottom,
                       width * up_w + left + right))
    rows_out = out.numel() // out.shape[-1]
    rows, columns = _pad_blocks(width)
    grid = (triton.cdiv(rows_out, rows), triton.cdiv(width, columns))
    mean, rstd = moments if moments is not None else (x, x)  # unread without NORM
    affine = norm is not None and norm.affine
    weight, bias = (norm.weight, norm.bias) if affine else (x, x)  # unread without AFFINE
    groups = norm.num_groups if norm is not None else channels
    _pad_rows[grid](x, out, mean, rstd, weight, bias, in_bias if in_bias is not None else x,
                    channels, channels // groups, frames, height, width, out.shape[2], out.shape[3], rows_out,
                    front, top, NORM=norm is not None, AFFINE=affine, IN_BIAS=in_bias is not None,
                    LEFT=left, RIGHT=right, UP_T=up_t, UP_H=up_h, UP_W=up_w, ROWS=rows, COLUMNS=columns,
                    num_warps=WARPS)
    return out


def group_moments(x: torch.Tensor, groups: int, eps: float, in_bias: torch.Tensor | None = None):
    """fp32 mean and 1 / sqrt(biased variance + eps) of each group of channels of a contiguous (N, C, ...)
    tensor (plus a per-channel `in_bias`), in one read of it: (N * groups,) each."""
    x = x.contiguous()
    n, channels = x.shape[:2]
    plane_size = x[0, 0].numel()
    parts = triton.cdiv(plane_size, STATS_BLOCK * STATS_STEPS)
    partial = torch.empty((3, n * channels, parts), dtype=torch.float32, device=x.device)
    _plane_partials[(n * channels, parts)](x, in_bias if in_bias is not None else x, partial[0], partial[1],
                                           partial[2], plane_size, channels, parts, HAS_BIAS=in_bias is not None,
                                           BLOCK=STATS_BLOCK, STEPS=STATS_STEPS, num_warps=WARPS)
    mean, rstd = torch.empty((2, n * groups), dtype=torch.float32, device=x.device)
    # a group's planes are consecutive: its partials are (channels // groups) * parts consecutive values
    _merge_group[(n * groups,)](partial[0], partial[1], partial[2], mean, rstd, channels // groups * parts, eps,
                                BLOCK=MERGE_BLOCK, num_warps=WARPS)
    return mean, rstd


def norm_silu_pad(x: torch.Tensor, norm: torch.nn.GroupNorm, pad: tuple[int, ...],
                  in_bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.pad(silu(norm(x + in_bias)), pad, mode="replicate") for a 5-D (N, C, T, H, W) tensor and an
    optional per-channel `in_bias`."""
    x = x.contiguous()  # once, for both passes
    return _pad_launch(x, pad, norm=norm, moments=group_moments(x, norm.num_groups, norm.eps, in_bias),
                       in_bias=in_bias)


def upsample_pad(x: torch.Tensor, factors: tuple[int, int, int], pad: tuple[int, ...]) -> torch.Tensor:
    """F.pad(up(x), pad, mode="replicate") for a contiguous 5-D tensor, up being diffusers' causal nearest
    upsampling by whole factors (engine/fast_decode.upsample_nearest)."""
    return _pad_launch(x, pad, factors=factors)


def add_bias_residual_(h: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None) -> torch.Tensor:
    """h += bias (per channel) + residual for (N, C, ...) tensors of one shape: in place where h is contiguous,
    else in a contiguous copy; returns the sum."""
    h = h.contiguous()
    residual = residual.contiguous() if residual is not None else None
    n, channels = h.shape[:2]
    plane_size = h[0, 0].numel()
    _add_bias_residual[(n * channels, triton.cdiv(plane_size, ADD_BLOCK))](
        h, bias if bias is not None else h, residual if residual is not None else h, plane_size, channels,
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, BLOCK=ADD_BLOCK, num_warps=WARPS)
    return h
