"""Opt-in FP8 transformer: e4m3 weights with one scale per output channel.

On Hopper and Ada, activations are quantized per token on the fly and the products run on the FP8 tensor
cores through torch._scaled_mm: the scheme torchao calls float8 dynamic activation + weight with row-wise
scales, written out here so that the engine needs no extra package. It halves the weight memory and
roughly doubles the matrix throughput; attention stays in bf16.

On GPUs without FP8 tensor cores (Ampere, Turing: the RTX 3090, 3060, 2080), the weights are stored in FP8
and widened to bf16 at each call: the same half of the memory to hold, and of the bytes to stream from
RAM where the memory plan streams blocks, with bf16 products. Either way the results change slightly (the
tests and benchmarks report by how much).
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) or 9.0+ (Hopper); the CPU runs it for tests."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scaled so its largest magnitude lands on e4m3's largest value; returns (fp8, scale)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class _Float8Weights(nn.Module):
    """A frozen nn.Linear's weight in e4m3 with one fp32 scale per output channel, and its bias as it was.
    `work_device` does the rounding; the results go back where the weight was."""

    scale_shape = (-1, 1)  # (out, 1); FP8 products want (1, out)

    def __init__(self, linear: nn.Linear, work_device: torch.device | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        home = linear.weight.device
        weight, scale = _quantize_rows(linear.weight.detach().to(work_device or home))
        self.register_buffer("weight", weight.to(home))  # (out, in) e4m3
        self.register_buffer("weight_scale", scale.reshape(self.scale_shape).to(home))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())


class Float8Linear(_Float8Weights):
    """A frozen nn.Linear on FP8 tensor cores; output in the input's dtype."""

    scale_shape = (1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows, row_scale = _quantize_rows(x.reshape(-1, shape[-1]))
        out = torch._scaled_mm(
            rows, self.weight.t(), scale_a=row_scale, scale_b=self.weight_scale,
            bias=self.bias, out_dtype=x.dtype, use_fast_accum=True,
        )
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 row-wise"


class Float8StoredLinear(_Float8Weights):
    """A frozen nn.Linear kept in e4m3, widened to the input's dtype at each call and multiplied in it: for
    GPUs without FP8 tensor cores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight.float() * self.weight_scale).to(x.dtype)
        return nn.functional.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored as e4m3 row-wise"


def _worth_fp8(name: str, linear: nn.Linear) -> bool:
    # The AdaLN modulation layers see one token (the time embedding): nothing to gain, keep them exact.
    # _scaled_mm needs both matrix dimensions divisible by 16.
    return not name.startswith("norm") and linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def quantize_blocks_fp8(transformer: nn.Module, work_device: torch.device | None = None,
                        compute: bool = True) -> int:
    """Swap the token-wise linears of the 60 blocks in place for Float8Linear (`compute`: FP8 products) or
    Float8StoredLinear (FP8 storage, products in the input's dtype); returns how many.

    `work_device` does the rounding (the GPU is much faster than the CPU for 12B weights); each new
    weight goes back where the old one was."""
    kind = Float8Linear if compute else Float8StoredLinear
    swapped = 0
    for blocks in (transformer.transformer_blocks, transformer.single_transformer_blocks):
        for block in blocks:
            for parent_name, parent in list(block.named_modules()):
                for child_name, child in list(parent.named_children()):
                    full = f"{parent_name}.{child_name}".lstrip(".")
                    if type(child) is nn.Linear and _worth_fp8(full, child):
                        setattr(parent, child_name, kind(child, work_device))
                        swapped += 1
    return swapped
