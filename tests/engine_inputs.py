"""A tiny transformer with several blocks of each kind, and one set of forward inputs for it."""

from __future__ import annotations

import torch
from tiny_models import HIDDEN


def tiny_transformer(dual: int = 3, single: int = 3, seed: int = 0) -> torch.nn.Module:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from engine.denoiser import use_fp32_output_projection

    torch.manual_seed(seed)
    model = HunyuanVideoFramepackTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, num_layers=dual, num_single_layers=single,
        num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=HIDDEN, pooled_projection_dim=HIDDEN,
        rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=HIDDEN, has_clean_x_embedder=True,
        guidance_embeds=True,
    ).to(torch.bfloat16)
    model.requires_grad_(False).eval()
    use_fp32_output_projection(model)
    return model


def forward_inputs(seed: int = 1, sigma: float = 0.9) -> dict:
    """Inputs shaped like one original-variant section call: window 3, 8x8 latents, 12 of 20 text tokens."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[:, :12] = True
    return dict(
        hidden_states=randn(1, 16, 3, 8, 8),
        timestep=torch.tensor([1000.0 * sigma]).to(torch.bfloat16),
        encoder_hidden_states=randn(1, 20, HIDDEN),
        encoder_attention_mask=mask,
        pooled_projections=randn(1, HIDDEN),
        image_embeds=randn(1, 5, HIDDEN),
        indices_latents=torch.arange(1, 4),
        guidance=torch.tensor([10000.0]).to(torch.bfloat16),
        latents_clean=randn(1, 16, 2, 8, 8),
        indices_latents_clean=torch.tensor([0, 4]),
        latents_history_2x=randn(1, 16, 2, 8, 8),
        indices_latents_history_2x=torch.tensor([5, 6]),
        latents_history_4x=randn(1, 16, 16, 8, 8),
        indices_latents_history_4x=torch.arange(7, 23),
    )


def stock(transformer, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]
