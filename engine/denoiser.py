"""The x0 wrapper D(x, sigma) around the FramePack transformer (SPEC.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def use_fp32_output_projection(transformer: torch.nn.Module) -> None:
    """Run proj_out in fp32 as the official demos do, so the velocity is not rounded to bf16."""
    if getattr(transformer, "_framepack_fp32_out", False):
        return
    transformer.proj_out.to(torch.float32)
    transformer.proj_out.register_forward_pre_hook(lambda _module, args: tuple(a.float() for a in args))
    transformer._framepack_fp32_out = True


@dataclass
class Conditioning:
    """Everything a transformer call takes besides x and the timestep, for one prompt."""

    text: torch.Tensor  # (1, 512, 4096) Llama tokens, zero padded
    text_mask: torch.Tensor  # (1, 512) bool
    pooled: torch.Tensor  # (1, 768) CLIP pooled
    image: torch.Tensor  # (1, 729, 1152) SigLIP

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Conditioning:
        return Conditioning(
            text=self.text.to(device, dtype),
            text_mask=self.text_mask.to(device),
            pooled=self.pooled.to(device, dtype),
            image=self.image.to(device, dtype),
        )


@dataclass
class SectionContext:
    """The packed history of one section, already on the device in the transformer's dtype."""

    indices_noisy: torch.Tensor
    clean: torch.Tensor
    indices_clean: torch.Tensor
    history_2x: torch.Tensor
    indices_2x: torch.Tensor
    history_4x: torch.Tensor
    indices_4x: torch.Tensor


@dataclass(frozen=True)
class Guidance:
    distilled: float = 10.0  # the guidance-distilled model's embedded scale
    cfg: float = 1.0  # true classifier-free guidance; 1 skips the negative pass
    rescale: float = 0.0


def distilled_guidance(guidance: Guidance, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The embedded guidance scale as the transformer takes it."""
    return torch.tensor([guidance.distilled * 1000.0], device=device).to(dtype)


def timestep_of(sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (sigma.float() * 1000.0).to(dtype)


def embedding_inputs(positive: Conditioning, negative: Conditioning | None, guidance: Guidance,
                     sigmas: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
    """(timestep, pooled prompt, guidance) of every model call a section's sampler makes at `sigmas`
    (each but the last, batch 1), built as `denoise` builds them (engine/modulation.py works out the AdaLN
    rows of these calls ahead)."""
    distilled = distilled_guidance(guidance, sigmas.device, dtype)
    prompts = [positive] if guidance.cfg == 1.0 or negative is None else [positive, negative]
    return [(timestep_of(sigma.expand(1), dtype), cond.pooled, distilled) for sigma in sigmas[:-1] for cond in prompts]


def make_denoiser(
    transformer: torch.nn.Module,
    positive: Conditioning,
    negative: Conditioning | None,
    context: SectionContext,
    guidance: Guidance,
):
    """Return D(x, sigma) -> x0 in fp32 for one section."""
    dtype = transformer.dtype
    device = context.clean.device
    distilled = distilled_guidance(guidance, device, dtype)

    def velocity(xb: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return transformer(
            hidden_states=xb,
            timestep=timestep,
            encoder_hidden_states=cond.text,
            encoder_attention_mask=cond.text_mask,
            pooled_projections=cond.pooled,
            image_embeds=cond.image,
            indices_latents=context.indices_noisy,
            guidance=distilled,
            latents_clean=context.clean,
            indices_latents_clean=context.indices_clean,
            latents_history_2x=context.history_2x,
            indices_latents_history_2x=context.indices_2x,
            latents_history_4x=context.history_4x,
            indices_latents_history_4x=context.indices_4x,
            return_dict=False,
        )[0].float()

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float()
        xb = x.to(dtype)
        timestep = timestep_of(sigma, dtype)
        v_pos = velocity(xb, timestep, positive)
        if guidance.cfg == 1.0 or negative is None:
            v = v_pos
        else:
            v_neg = velocity(xb, timestep, negative)
            v = v_neg + guidance.cfg * (v_pos - v_neg)
            if guidance.rescale != 0.0:
                dims = list(range(1, v.ndim))
                rescaled = v * (v_pos.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True))
                v = guidance.rescale * rescaled + (1.0 - guidance.rescale) * v
        return xb.float() - v * sigma.view(-1, *[1] * (x.ndim - 1))

    return denoise
