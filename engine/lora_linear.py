"""A linear with LoRA updates added to its output, unfused: base(x) + up @ (down @ x).

The wrapper goes around whatever the linear is in the memory plan: a plain nn.Linear on the GPU, one whose
weights the block streamer re-points into a GPU slot each step (the streamer keeps the base's tensors, which
stay where they are), an FP8 linear. `down` and `up` are plain attributes, not parameters or buffers, so the
streamer never packs or streams them: they stay on the GPU from job start to job end.

Every LoRA of a job and its strength are in one pair per linear: the ranks side by side, strength x alpha /
rank folded into `up`, so the forward is the same two products whatever the job. For torch.compile the pair
is a pair of tensors whose rank dimension is marked dynamic: a switch to other LoRAs or strengths on the same
linears reuses the compiled blocks; only a new set of targeted linears compiles the blocks again (once).
"""

from __future__ import annotations

import torch
from torch import nn

RANK_MULTIPLE = 16  # ranks are zero-padded to this (exact: the padding adds zeros)


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.down, self.up = down, up  # (rank, in), (out, rank): not registered on purpose (see above)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + lora_update(self, x).to(out.dtype)

    def extra_repr(self) -> str:
        return f"lora rank {self.down.shape[0]} (padded)"


def lora_update(linear: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(nn.functional.linear(x.to(linear.down.dtype), linear.down), linear.up)


def unwrapped(linear: nn.Module) -> nn.Module:
    return linear.base if isinstance(linear, LoraLinear) else linear


def with_lora(linear: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out`, the base linear's output for `x`, plus the LoRA update where `linear` carries one (the AdaLN
    modulation, worked out at a section's start from the linear kept in RAM, goes through here)."""
    if not isinstance(linear, LoraLinear):
        return out
    return out + lora_update(linear, x).to(out.dtype)


def combined_pair(updates: list[tuple[torch.Tensor, torch.Tensor, float]], device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One (down, up) for several (down, up, scale) updates of one linear: sum of scale * up @ down, ranks
    concatenated and zero-padded to RANK_MULTIPLE; the scales are folded into `up` in fp32 before rounding."""
    downs = [down.to(device, torch.float32) for down, _, _ in updates]
    ups = [up.to(device, torch.float32) * scale for _, up, scale in updates]
    rank = sum(d.shape[0] for d in downs)
    padding = -rank % RANK_MULTIPLE
    if padding:
        downs.append(downs[0].new_zeros(padding, downs[0].shape[1]))
        ups.append(ups[0].new_zeros(ups[0].shape[0], padding))
    down, up = torch.cat(downs).to(dtype).contiguous(), torch.cat(ups, dim=1).to(dtype).contiguous()
    # the same compiled graph for every rank (torch.compile would otherwise recompile the blocks per rank)
    torch._dynamo.maybe_mark_dynamic(down, 0)
    torch._dynamo.maybe_mark_dynamic(up, 1)
    return down, up
