"""A faster eager VAE decode with the same tiles and, up to rounding, the same pixels.

Profiled on an H200 (benchmarks/results/2026-12-03_vae_decode_profile_eager_h200.txt), a section's decode
spent a third of its GPU time in GroupNorm's statistics kernel (one thread block per group: 32 blocks for a
tensor of 850 million values), a sixth in torch's replication-pad kernel, and more in separate SiLU, pad,
upsample and concatenation passes over the same tensors. `speed_up_decoder` rewrites how the decoder's
resnets, upsamplers and output layer reach the GPU, not what they compute:

- GroupNorm's statistics are fp32-accumulated reductions that torch spreads over the whole GPU (the mean,
  then the spread around it); the normalisation and affine are one batch-norm pass in inference mode;
- the SiLU writes straight into the causal convolution's replicate-padded buffer, whose edges are copied;
- nearest upsampling by whole factors is a broadcast copy into one buffer instead of two interpolations
  and a concatenation.

diffusers' frame-wise decode (temporal tiles of 5 latent frames every 3, blended) and every convolution
stay as they are. The encoder is left alone: the start latent is the official one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 1 << 27  # values per slice of the variance pass: its deviations take 256 MB in fp16


def is_channels_last(x: torch.Tensor) -> bool:
    """Channels innermost in memory (and not merely because there is one channel)."""
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


def empty_in_layout(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An empty 5-D tensor of `shape` with x's memory layout: cuDNN takes channels-last convolutions as they
    are, where a channels-first input costs it two layout copies a convolution."""
    layout = torch.channels_last_3d if is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


def replicate_pad(x: torch.Tensor, pad: tuple[int, ...], fill=None) -> torch.Tensor:
    """F.pad(x, pad, mode="replicate") for a 5-D tensor, from copies. `fill(x, interior)` writes the
    interior instead of a plain copy (a SiLU straight into the padded buffer)."""
    left, right, top, bottom, front, back = pad
    n, c, t, h, w = x.shape
    out = empty_in_layout(x, (n, c, t + front + back, h + top + bottom, w + left + right))
    inner = out[:, :, front:front + t]
    middle = inner[:, :, :, top:top + h]
    if fill is None:
        middle[..., left:left + w].copy_(x)
    else:
        fill(x, middle[..., left:left + w])
    if left:
        middle[..., :left].copy_(middle[..., left:left + 1].expand(-1, -1, -1, -1, left))
    if right:
        middle[..., left + w:].copy_(middle[..., left + w - 1:left + w].expand(-1, -1, -1, -1, right))
    if top:  # whole padded rows, corners included
        inner[:, :, :, :top].copy_(inner[:, :, :, top:top + 1].expand(-1, -1, -1, top, -1))
    if bottom:
        inner[:, :, :, top + h:].copy_(inner[:, :, :, top + h - 1:top + h].expand(-1, -1, -1, bottom, -1))
    if front:
        out[:, :, :front].copy_(inner[:, :, :1].expand(-1, -1, front, -1, -1))
    if back:
        out[:, :, front + t:].copy_(inner[:, :, -1:].expand(-1, -1, back, -1, -1))
    return out


def _group_moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of each row, in fp32, from reductions torch spreads over the whole GPU.

    The variance is taken around the mean rounded to the rows' dtype, in slices of at most CHUNK values,
    so it has no cancellation (E[x^2] - E[x]^2 lost 9% of a normalised fp16 value whose mean was 60
    standard deviations from zero) and no fp32 copy of the tensor."""
    count = rows.shape[1]
    mean = rows.sum(1, dtype=torch.float32) / count
    shift = mean.to(rows.dtype)
    var = torch.empty_like(mean)
    step = max(1, CHUNK // count)
    for start in range(0, rows.shape[0], step):
        part = slice(start, start + step)
        deviation = rows[part] - shift[part, None]
        var[part] = torch.linalg.vector_norm(deviation, 2, dim=1, dtype=torch.float32).square_() / count
    # E[(x - s)^2] = var + (mean - s)^2 for the rounded shift s
    return mean, var.sub_((mean - shift.float()).square_()).clamp_min_(0)


def _channels_last_group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_group_moments` of a channels-last (N, C, ...) tensor's groups, flattened to (N * groups,): each
    channel's sums over the positions (C innermost, so the reductions read memory in order), then its group's."""
    n, channels = x.shape[:2]
    per_group = channels // groups
    positions = x.permute(0, *range(2, x.dim()), 1).reshape(n, -1, channels)  # a view: C is innermost
    count = positions.shape[1] * per_group
    mean = positions.sum(1, dtype=torch.float32).view(n, groups, per_group).sum(2) / count
    shift = mean.to(x.dtype)
    shift_per_channel = shift.repeat_interleave(per_group, dim=1)[:, None]
    squares = torch.zeros(n, channels, dtype=torch.float32, device=x.device)
    step = max(1, CHUNK // channels)
    for start in range(0, positions.shape[1], step):
        deviation = positions[:, start:start + step] - shift_per_channel
        squares += torch.linalg.vector_norm(deviation, 2, dim=1, dtype=torch.float32).square_()
    var = squares.view(n, groups, per_group).sum(2) / count
    mean, shift, var = mean.flatten(), shift.flatten(), var.flatten()
    return mean, var.sub_((mean - shift.float()).square_()).clamp_min_(0)


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """`norm(x)` for a contiguous or channels-last (N, C, ...) tensor: the statistics from `_group_moments`,
    then one batch-norm pass in inference mode (per channel, fp32 math) for the normalisation and affine."""
    n, channels = x.shape[:2]
    groups = norm.num_groups
    if n > 1 and is_channels_last(x):  # one image at a time keeps each one's channels innermost
        return torch.cat([group_norm(one, norm) for one in x.split(1)])
    if is_channels_last(x):
        mean, var = _channels_last_group_moments(x, groups)
    else:
        mean, var = _group_moments(x.reshape(n * groups, -1))
    per_channel = channels // groups
    mean = mean.repeat_interleave(per_channel)
    var = var.repeat_interleave(per_channel)
    weight = norm.weight.float().repeat(n) if norm.affine else None
    bias = norm.bias.float().repeat(n) if norm.affine else None
    flat = x.reshape(1, n * channels, *x.shape[2:])
    return F.batch_norm(flat, mean, var, weight, bias, training=False, eps=norm.eps).view_as(x)


def _silu_into(x: torch.Tensor, out: torch.Tensor) -> None:
    torch.ops.aten.silu.out(x, out=out)


def _norm_silu_pad(x: torch.Tensor, weight, bias, groups: int, eps: float, pad: tuple[int, ...]) -> torch.Tensor:
    return F.pad(F.silu(F.group_norm(x, groups, weight, bias, eps)), pad, mode="replicate")


_compiled_norm_silu_pad = None


def compiled_norm_silu_pad():
    """`_norm_silu_pad` through Inductor with dynamic shapes: one fused reduction and one fused write for
    every resolution and window, compiled once."""
    global _compiled_norm_silu_pad
    if _compiled_norm_silu_pad is None:
        _compiled_norm_silu_pad = torch.compile(_norm_silu_pad, dynamic=True)
    return _compiled_norm_silu_pad


def norm_silu_conv(x: torch.Tensor, norm: nn.GroupNorm, conv, fused=None) -> torch.Tensor:
    """conv(silu(norm(x))) for a diffusers causal convolution, the SiLU written into its padded input, or
    `fused(x, weight, bias, groups, eps, pad)` doing the three."""
    if fused is not None:
        return conv.conv(fused(x, norm.weight, norm.bias, norm.num_groups, norm.eps, conv.time_causal_padding))
    normed = group_norm(x, norm)
    return conv.conv(replicate_pad(normed, conv.time_causal_padding, fill=_silu_into))


def _causal_conv(conv, x: torch.Tensor) -> torch.Tensor:
    if not any(conv.time_causal_padding):
        return conv.conv(x)
    return conv.conv(replicate_pad(x, conv.time_causal_padding))


def _resnet_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    x = hidden_states if is_channels_last(hidden_states) else hidden_states.contiguous()
    h = norm_silu_conv(x, self.norm1, self.conv1, self._framepack_fused)
    h = norm_silu_conv(h, self.norm2, self.conv2, self._framepack_fused)  # dropout: none at inference
    residual = x if self.conv_shortcut is None else _causal_conv(self.conv_shortcut, x)
    return h.add_(residual)


def upsample_nearest(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """diffusers' causal nearest upsampling: the first frame in space only, the others in time and space."""
    n, c, t, h, w = x.shape
    ft, fh, fw = factors
    out = empty_in_layout(x, (n, c, 1 + (t - 1) * ft, h * fh, w * fw))
    first = x[:, :, :1, :, None, :, None].expand(n, c, 1, h, fh, w, fw)
    out[:, :, :1].copy_(first.reshape(n, c, 1, h * fh, w * fw))
    if t > 1:
        rest = x[:, :, 1:, None, :, None, :, None].expand(n, c, t - 1, ft, h, fh, w, fw)
        out[:, :, 1:].view(n, c, t - 1, ft, h, fh, w, fw).copy_(rest)
    return out


def _upsample_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return _causal_conv(self.conv, upsample_nearest(hidden_states, self._whole_factors))


def _decoder_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if self._framepack_channels_last:
        hidden_states = hidden_states.contiguous(memory_format=torch.channels_last_3d)
    hidden_states = self.mid_block(self.conv_in(hidden_states))
    for up_block in self.up_blocks:
        hidden_states = up_block(hidden_states)
    if not is_channels_last(hidden_states):
        hidden_states = hidden_states.contiguous()
    fused = self._framepack_fused
    return norm_silu_conv(hidden_states, self.conv_norm_out, self.conv_out, fused).contiguous()  # 3 channels: cheap


def _whole(factors) -> tuple[int, int, int] | None:
    whole = tuple(int(f) for f in factors)
    return whole if len(whole) == 3 and all(w == f and w >= 1 for w, f in zip(whole, factors, strict=True)) else None


def speed_up_decoder(vae, channels_last: bool = False, compiled_norm: bool = False) -> int:
    """Rewrite the decoder's resnets, upsamplers and output as above (in place, once); returns the modules
    changed, 0 when the decoder is not diffusers' HunyuanVideo one as this module knows it. `channels_last`
    also keeps the decoder's tensors and convolution weights channels-innermost; `compiled_norm` has Inductor
    fuse each GroupNorm, SiLU and padding."""
    from diffusers.models.autoencoders import autoencoder_kl_hunyuan_video as hv

    decoder = vae.decoder
    if getattr(decoder, "_framepack_fast", False):
        return 0
    resnets = [m for m in decoder.modules() if isinstance(m, hv.HunyuanVideoResnetBlockCausal3D)]
    upsamplers = [m for m in decoder.modules() if isinstance(m, hv.HunyuanVideoUpsampleCausal3D)]
    understood = (
        isinstance(decoder, hv.HunyuanVideoDecoder3D) and isinstance(decoder.conv_act, nn.SiLU)
        and all(isinstance(r.nonlinearity, nn.SiLU) and r.conv1.pad_mode == r.conv2.pad_mode == "replicate"
                for r in resnets)
        and all(_whole(u.upsample_factor) and u.conv.pad_mode == "replicate" for u in upsamplers)
        and decoder.conv_out.pad_mode == "replicate"
    )
    if not understood:
        return 0
    fused = compiled_norm_silu_pad() if compiled_norm else None
    for resnet in resnets:
        resnet._framepack_fused = fused
        resnet.forward = _resnet_forward.__get__(resnet)
    for upsampler in upsamplers:
        upsampler._whole_factors = _whole(upsampler.upsample_factor)
        upsampler.forward = _upsample_forward.__get__(upsampler)
    if channels_last:
        for conv in decoder.modules():
            if isinstance(conv, nn.Conv3d):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    decoder._framepack_channels_last = channels_last
    decoder._framepack_fused = fused
    decoder.forward = _decoder_forward.__get__(decoder)
    decoder._framepack_fast = True
    return len(resnets) + len(upsamplers) + 1
