"""AdaLN modulation worked out once per section, so that streamed blocks leave its weights at home.

Each block's AdaLN-Zero layers turn the time embedding (one vector per model call) into shift, scale and
gate vectors through a linear of 6 x 3072 x 3072 (two per dual-stream block) or 3 x 3072 x 3072 (single):
a third of a dual-stream block's bytes and a fifth of a single-stream one's, for one token of compute.
The time embedding depends only on the timestep, the pooled prompt and the distilled guidance, all known
before a section samples. So where blocks stream, these linears stay in RAM: at a section's start each
visits the GPU once and gives its outputs for every model call of the section, and during the steps the
layer returns the row of the call's embedding. The same linear on the same input: the video is unchanged
(bit for bit on the CPU; on a GPU the compiled blocks' fused SiLU may round differently).
"""

from __future__ import annotations

import torch
from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle
from torch import nn

from engine.lora_linear import unwrapped, with_lora
from engine.offload import cpu_copy

_ADALN = (AdaLayerNormZero, AdaLayerNormZeroSingle)


class _Table:
    """The section's embeddings and every layer's outputs for each; a plain object so that none of it is
    part of a block (the block streamer packs and streams every tensor a block registers)."""

    def __init__(self):
        self.keys: torch.Tensor | None = None  # (K, dim) the time embeddings of the section's model calls
        self.values: torch.Tensor | None = None  # (K, sum of outputs) every layer's rows, side by side
        self.current: torch.Tensor | None = None  # (B, sum of outputs) the rows of the call in progress
        self.misses: torch.Tensor | None = None  # calls whose embedding was not in `keys` (checked after)
        self.layers: list[PrecomputedModulation] = []
        self.pinned: list[torch.Tensor] = []  # the pinned buffers of the linears' weights, kept registered

    def hold(self, rows: torch.Tensor) -> None:
        """This call's rows into `current`, which stays the same tensor from call to call (what the compiled
        blocks read stays put); each layer sees its columns through a view made once."""
        if self.current is None or self.current.shape != rows.shape:
            self.current = rows.clone()
            for layer in self.layers:
                layer.rows = self.current[:, layer.offset:layer.offset + layer.width]
        else:
            self.current.copy_(rows)

    def clear(self) -> None:
        self.keys, self.values, self.current = None, None, None
        for layer in self.layers:
            layer.rows = None


class PrecomputedModulation(nn.Module):
    """Stands in for an AdaLN layer's linear: returns this call's row, worked out at the section's start.

    The original linear is kept in `home` (a list, not a submodule: its weights stay where they were
    loaded, out of the block). `rows` is a plain tensor attribute, not a buffer, for the same reason; a
    tensor rather than an offset so that the 60 blocks' compiled graphs stay one per block kind."""

    def __init__(self, linear: nn.Linear, silu: nn.Module, offset: int):
        super().__init__()
        self.home = [linear]
        self.silu = silu
        self.offset, self.width = offset, linear.out_features
        self.rows: torch.Tensor | None = None

    def forward(self, _silu_emb: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            raise RuntimeError("The AdaLN modulation of this call was not worked out: run prepare_section first.")
        return self.rows

    def extra_repr(self) -> str:
        return f"out_features={self.width}, precomputed per section"


def adaln_layers(blocks) -> list[nn.Module]:
    """The AdaLN-Zero layers of `blocks`, in order."""
    return [module for block in blocks for module in block.modules() if isinstance(module, _ADALN)]


def precompute_modulation(transformer: nn.Module, blocks, pin: bool = False) -> int:
    """Take the AdaLN linears out of `blocks` into RAM; returns their bytes. Idempotent. With `pin`, their
    weights are copied to pinned RAM (faster visits; else they stay where they were loaded)."""
    if getattr(transformer, "_framepack_modulation", None) is not None:
        return 0
    table, offset, moved = _Table(), 0, 0
    for norm in adaln_layers(blocks):
        linear = norm.linear.to("cpu")  # a no-op for weights loaded to RAM (mapped ones stay mapped)
        if pin:  # the streamer's pinned buffers: no power-of-two rounding, not copied into forked children
            for name, tensor in list(linear.named_parameters(recurse=False)):
                setattr(linear, name, nn.Parameter(cpu_copy(tensor, True, table.pinned), requires_grad=False))
        norm.linear = PrecomputedModulation(linear, norm.silu, offset)
        table.layers.append(norm.linear)
        offset += linear.out_features
        moved += sum(t.numel() * t.element_size() for t in linear.parameters())
    transformer._framepack_modulation = table
    handle = transformer.time_text_embed.register_forward_hook(lambda _m, _a, out: _select(table, out[0]))
    transformer._framepack_modulation_hook = handle
    return moved


def restore_modulation(transformer: nn.Module) -> None:
    """Put the linears back into their layers (the plain model again)."""
    table = getattr(transformer, "_framepack_modulation", None)
    if table is None:
        return
    transformer._framepack_modulation_hook.remove()
    for module in transformer.modules():
        if isinstance(module, _ADALN) and isinstance(module.linear, PrecomputedModulation):
            module.linear = module.linear.home[0]
    transformer._framepack_modulation = None


def _select(table: _Table, temb: torch.Tensor) -> None:
    """The forward's time embedding picks its rows; a miss is counted on the device, not waited for."""
    if table.keys is None:
        return  # prepare_section is computing the keys
    match = (temb.unsqueeze(1) == table.keys.unsqueeze(0)).all(dim=-1)  # (B, K)
    table.hold(table.values[match.int().argmax(dim=1)])
    table.misses += (~match.any(dim=1)).sum()


@torch.no_grad()
def prepare_section(transformer: nn.Module, embedding_inputs) -> None:
    """Work out every layer's output for each model call of a section.

    `embedding_inputs` are (timestep, pooled, guidance) for each call, as the denoiser will pass them; the
    transformer's non-block weights must be on its device (the streamer attached). No-op without
    precompute_modulation."""
    table = getattr(transformer, "_framepack_modulation", None)
    if table is None:
        return
    table.clear()
    tembs = [transformer.time_text_embed(*inputs)[0] for inputs in embedding_inputs]
    device, dtype = tembs[0].device, tembs[0].dtype
    columns = []
    for lookup in table.layers:
        linear = unwrapped(lookup.home[0])
        weight = linear.weight.to(device, dtype, non_blocking=True)
        bias = None if linear.bias is None else linear.bias.to(device, dtype, non_blocking=True)
        # one call per embedding, at the shape the layer sees during the steps: the same kernel, the same rows;
        # a LoRA on the layer (engine/lora_linear.py) adds its update to them
        columns.append(torch.cat([with_lora(lookup.home[0], x, nn.functional.linear(x, weight, bias))
                                  for x in (lookup.silu(t) for t in tembs)]))
    table.values = torch.cat(columns, dim=1)
    table.keys = torch.cat(tembs)
    table.misses = torch.zeros((), dtype=torch.int64, device=device)


def check_section(transformer: nn.Module) -> None:
    """After a section: every call found its rows (a miss would have used another call's modulation)."""
    table = getattr(transformer, "_framepack_modulation", None)
    if table is not None and table.misses is not None and int(table.misses) > 0:
        raise RuntimeError(f"{int(table.misses)} model calls had a time embedding that was not worked out at the "
                           "section's start: the precomputed AdaLN modulation does not cover them.")
