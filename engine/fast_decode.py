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

On CUDA with Triton, engine/decode_kernels.py does the same work in fewer passes (the statistics in one read,
norm, SiLU and padding or upsampling and padding in one read and one write, the resnets' biases folded in):
1.71 s against 2.16 s a section's decode on the H200. Each GPU checks those kernels once against torch's.

diffusers' frame-wise decode (temporal tiles of 5 latent frames every 3, blended) and every convolution
stay as they are. The encoder is left alone: the start latent is the official one.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CHUNK = 1 << 27  # values per slice of the variance pass: its deviations take 256 MB in fp16


def replicate_pad(x: torch.Tensor, pad: tuple[int, ...], fill=None) -> torch.Tensor:
    """F.pad(x, pad, mode="replicate") for a 5-D tensor, from copies. `fill(x, interior)` writes the
    interior instead of a plain copy (a SiLU straight into the padded buffer)."""
    left, right, top, bottom, front, back = pad
    n, c, t, h, w = x.shape
    out = x.new_empty((n, c, t + front + back, h + top + bottom, w + left + right))
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


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """`norm(x)` for a contiguous (N, C, ...) tensor: the statistics from `_group_moments`, then one
    batch-norm pass in inference mode (per channel, fp32 math) for the normalisation and affine."""
    n, channels = x.shape[:2]
    groups = norm.num_groups
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


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def kernel_module():
    return importlib.import_module("engine.decode_kernels")


def kernels_agree_with_torch(kernels, device: torch.device) -> bool:
    """Each of engine/decode_kernels.py's kernels once on small tensors on `device`, against this module's
    torch path: True where all agree."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 3, 5, 16, generator=generator).to(device, torch.float16)
    bias = torch.randn(8, generator=generator).to(device, torch.float16)
    norm = nn.GroupNorm(4, 8, eps=1e-6).to(device, torch.float16)
    pad = (1, 1, 1, 1, 2, 0)
    with torch.no_grad():
        shifted = x + bias.view(1, -1, 1, 1, 1)
        normed = F.silu(group_norm(shifted, norm).float())
        pairs = [
            (kernels.norm_silu_pad(x, norm, pad, in_bias=bias), F.pad(normed, pad, mode="replicate")),
            (kernels.upsample_pad(x, (2, 2, 2), pad), F.pad(upsample_nearest(x, (2, 2, 2)).float(), pad,
                                                           mode="replicate")),
            (kernels.add_bias_residual_(x.clone(), bias, x), shifted + x),
        ]
    return all(got.shape == expected.shape and torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
               for got, expected in pairs)


@functools.cache
def kernels_work_on(device: torch.device) -> bool:
    """Whether engine/decode_kernels.py compiles and gives torch's values on this GPU, checked once: Triton
    does not build for every GPU (older ones), and a decode must not fail where torch's kernels would do."""
    if not _triton_installed():
        return False
    try:
        if kernels_agree_with_torch(kernel_module(), device):
            return True
        problem = "their values differ from torch's"
    except Exception as error:  # a compiler's or a driver's: any error means "not on this GPU"
        problem = f"{type(error).__name__}: {error}"
    log.warning("the decoder's Triton kernels do not work on %s (%s): decoding with torch's kernels", device, problem)
    return False


def kernels_for(module: nn.Module, x: torch.Tensor):
    """engine/decode_kernels.py where the decoder was sped up with kernels and they work here (a CUDA tensor,
    Triton installed, the self-check passed), else None."""
    if module._framepack_kernels and x.is_cuda and kernels_work_on(x.device):
        return kernel_module()
    return None


def norm_silu_conv(x: torch.Tensor, norm: nn.GroupNorm, conv, kernels=None) -> torch.Tensor:
    """conv(silu(norm(x))) for a diffusers causal convolution, the SiLU written into its padded input;
    by engine/decode_kernels.py's two passes where `kernels` is that module."""
    if kernels is not None:
        return conv.conv(kernels.norm_silu_pad(x, norm, conv.time_causal_padding))
    normed = group_norm(x, norm)
    return conv.conv(replicate_pad(normed, conv.time_causal_padding, fill=_silu_into))


def _unbiased_conv(conv, padded: torch.Tensor) -> torch.Tensor:
    return conv.conv._conv_forward(padded, conv.conv.weight, None)  # nn.Conv3d's own call, its bias left out


def _resnet_by_kernels(self, x: torch.Tensor, kernels) -> torch.Tensor:
    """_resnet_forward through engine/decode_kernels.py, each convolution's bias added where its output is read
    next: conv1's inside norm2, conv2's and the shortcut's in the residual sum (cuDNN's convolutions add a
    bias in a pass of their own)."""
    h = _unbiased_conv(self.conv1, kernels.norm_silu_pad(x, self.norm1, self.conv1.time_causal_padding))
    h = _unbiased_conv(self.conv2, kernels.norm_silu_pad(h, self.norm2, self.conv2.time_causal_padding,
                                                         in_bias=self.conv1.conv.bias))
    bias, residual = self.conv2.conv.bias, x
    if self.conv_shortcut is not None:
        shortcut = self.conv_shortcut
        padding = shortcut.time_causal_padding
        residual = _unbiased_conv(shortcut, kernels.upsample_pad(x, (1, 1, 1), padding) if any(padding) else x)
        if shortcut.conv.bias is not None:
            bias = shortcut.conv.bias if bias is None else bias + shortcut.conv.bias
    return kernels.add_bias_residual_(h, bias, residual)


def _causal_conv(conv, x: torch.Tensor) -> torch.Tensor:
    if not any(conv.time_causal_padding):
        return conv.conv(x)
    return conv.conv(replicate_pad(x, conv.time_causal_padding))


def _resnet_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    x = hidden_states.contiguous()
    kernels = kernels_for(self, x)
    if kernels is not None:
        return _resnet_by_kernels(self, x, kernels)
    h = norm_silu_conv(x, self.norm1, self.conv1)
    h = norm_silu_conv(h, self.norm2, self.conv2)  # dropout: none at inference
    residual = x if self.conv_shortcut is None else _causal_conv(self.conv_shortcut, x)
    return h.add_(residual)


def upsample_nearest(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """diffusers' causal nearest upsampling: the first frame in space only, the others in time and space."""
    n, c, t, h, w = x.shape
    ft, fh, fw = factors
    out = x.new_empty((n, c, 1 + (t - 1) * ft, h * fh, w * fw))
    first = x[:, :, :1, :, None, :, None].expand(n, c, 1, h, fh, w, fw)
    out[:, :, :1].copy_(first.reshape(n, c, 1, h * fh, w * fw))
    if t > 1:
        rest = x[:, :, 1:, None, :, None, :, None].expand(n, c, t - 1, ft, h, fh, w, fw)
        out[:, :, 1:].view(n, c, t - 1, ft, h, fh, w, fw).copy_(rest)
    return out


def _upsample_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    kernels = kernels_for(self, hidden_states)
    if kernels is not None:  # one pass: upsampled straight into the padded buffer
        x = hidden_states.contiguous()
        return self.conv.conv(kernels.upsample_pad(x, self._whole_factors, self.conv.time_causal_padding))
    return _causal_conv(self.conv, upsample_nearest(hidden_states, self._whole_factors))


def _decoder_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    hidden_states = self.mid_block(self.conv_in(hidden_states))
    for up_block in self.up_blocks:
        hidden_states = up_block(hidden_states)
    x = hidden_states.contiguous()
    return norm_silu_conv(x, self.conv_norm_out, self.conv_out, kernels_for(self, x))


def _whole(factors) -> tuple[int, int, int] | None:
    whole = tuple(int(f) for f in factors)
    return whole if len(whole) == 3 and all(w == f and w >= 1 for w, f in zip(whole, factors, strict=True)) else None


def speed_up_decoder(vae, kernels: bool = True) -> int:
    """Rewrite the decoder's resnets, upsamplers and output as above (in place, once); returns the modules
    changed, 0 when the decoder is not diffusers' HunyuanVideo one as this module knows it. With `kernels`,
    norms and upsamplings on CUDA take engine/decode_kernels.py's Triton kernels."""
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
    for module in [*resnets, *upsamplers, decoder]:
        module._framepack_kernels = kernels
    for resnet in resnets:
        resnet.forward = _resnet_forward.__get__(resnet)
    for upsampler in upsamplers:
        upsampler._whole_factors = _whole(upsampler.upsample_factor)
        upsampler.forward = _upsample_forward.__get__(upsampler)
    decoder.forward = _decoder_forward.__get__(decoder)
    decoder._framepack_fast = True
    return len(resnets) + len(upsamplers) + 1
