"""The FramePack transformer's forward pass with its block loop made replaceable (for TeaCache).

Step for step the same computation as diffusers 0.42.1's `HunyuanVideoFramepackTransformer3DModel.forward`
(tests check the two agree bit for bit), split so that the 60 blocks run through a callable: the plain
loop, or a cache that decides to skip them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BlockInputs:
    """What the 20 dual-stream and 40 single-stream blocks take."""

    hidden: torch.Tensor  # packed image tokens [4x, 2x, clean, noisy]
    encoder: torch.Tensor  # SigLIP + text tokens
    temb: torch.Tensor
    attention_mask: torch.Tensor | None
    rope: tuple[torch.Tensor, torch.Tensor]


BlockLoop = Callable[[nn.Module, BlockInputs], torch.Tensor]


def run_all_blocks(transformer: nn.Module, x: BlockInputs) -> torch.Tensor:
    """The plain loop: every block, in order; returns the image stream."""
    hidden, encoder = x.hidden, x.encoder
    for block in transformer.transformer_blocks:
        hidden, encoder = block(hidden, encoder, x.temb, x.attention_mask, x.rope)
    for block in transformer.single_transformer_blocks:
        hidden, encoder = block(hidden, encoder, x.temb, x.attention_mask, x.rope)
    return hidden


def _rope(transformer, indices, height, width, device):
    return transformer.rope(frame_indices=indices, height=height, width=width, device=device)


def packed_forward(
    transformer: nn.Module,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    pooled_projections: torch.Tensor,
    image_embeds: torch.Tensor,
    indices_latents: torch.Tensor,
    guidance: torch.Tensor,
    latents_clean: torch.Tensor,
    indices_latents_clean: torch.Tensor,
    latents_history_2x: torch.Tensor,
    indices_latents_history_2x: torch.Tensor,
    latents_history_4x: torch.Tensor,
    indices_latents_history_4x: torch.Tensor,
    blocks: BlockLoop = run_all_blocks,
) -> torch.Tensor:
    """The velocity (B, C, T, H, W), as the stock forward returns it with return_dict=False."""
    t = transformer
    batch_size, _, num_frames, height, width = hidden_states.shape
    p, p_t = t.config.patch_size, t.config.patch_size_t
    frames, rows, cols = num_frames // p_t, height // p, width // p
    noisy_length = frames * rows * cols

    hidden = t.x_embedder(hidden_states)
    device = hidden.device
    rope = _rope(t, indices_latents, height, width, device)
    clean, history_2x, history_4x = t.clean_x_embedder(latents_clean, latents_history_2x, latents_history_4x)
    hidden, rope = t._pack_history_states(
        hidden, clean, history_2x, history_4x, rope,
        _rope(t, indices_latents_clean, height, width, device),
        _rope(t, indices_latents_history_2x, height, width, device),
        _rope(t, indices_latents_history_4x, height, width, device),
        rows, cols,
    )

    temb, _ = t.time_text_embed(timestep, pooled_projections, guidance)
    encoder = t.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
    image_tokens = t.image_projection(image_embeds)
    image_mask = encoder_attention_mask.new_ones((batch_size, image_tokens.shape[1]))
    encoder = torch.cat([image_tokens, encoder], dim=1)
    encoder_mask = torch.cat([image_mask, encoder_attention_mask], dim=1)

    condition_length = encoder_mask.sum(dim=1, dtype=torch.int)
    if batch_size == 1:
        encoder = encoder[:, : condition_length[0]]  # no mask needed: cutting the padding is the same
        attention_mask = None
    else:
        attention_mask = torch.zeros(batch_size, hidden.shape[1] + encoder.shape[1], device=device, dtype=torch.bool)
        for i in range(batch_size):
            attention_mask[i, : hidden.shape[1] + condition_length[i]] = True
        attention_mask = attention_mask.unsqueeze(1).unsqueeze(1)

    hidden = blocks(t, BlockInputs(hidden, encoder, temb, attention_mask, rope))

    hidden = hidden[:, -noisy_length:]
    hidden = t.norm_out(hidden, temb)
    hidden = t.proj_out(hidden)
    hidden = hidden.reshape(batch_size, frames, rows, cols, -1, p_t, p, p)
    hidden = hidden.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class BlockLoopTransformer:
    """Stands in for the transformer in the denoiser: the same call, with the 60 blocks run by `blocks`."""

    def __init__(self, transformer: nn.Module, blocks: BlockLoop):
        self.transformer = transformer
        self.blocks = blocks

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __call__(self, return_dict: bool = False, **inputs) -> tuple[torch.Tensor]:
        return (packed_forward(self.transformer, **inputs, blocks=self.blocks),)
