"""The sampling half of the FramePack section loop: one section at a time from the packed history.

`render` drives it and does the decoding, the video and the checkpoints around it; the golden tests
drive it alone and compare each section's latents with the official demos'. SPEC.md sections 3 to 6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine import sections as sec
from engine.denoiser import Conditioning, Guidance, SectionContext, embedding_inputs, make_denoiser
from engine.direction import Guides, SectionPrompt, keyframe_for
from engine.models import FramePackModels
from engine.modulation import check_section, prepare_section
from engine.teacache import TeaCache, TeaCacheTransformer
from engine.text_encoding import encode_prompt
from engine.unipc import Paused, flux_mu, flux_sigmas, sample_unipc

StepCallback = Callable[[int, torch.Tensor], None]  # (step index, x0 of that step)


@dataclass
class JobConditioning:
    """What a job computes once from its picture and prompts (SPEC.md section 1 and 2)."""

    positive: Conditioning
    negative: Conditioning | None  # only with true CFG
    start_latent: torch.Tensor  # (1, 16, 1, h, w) fp32 on the CPU
    end_latent: torch.Tensor | None = None  # the end picture's (original variant), before its strength
    keyframe_latents: dict[int, torch.Tensor] = field(default_factory=dict)  # generation index -> latent
    timed: dict[str, Conditioning] = field(default_factory=dict)  # each distinct timed prompt
    section_prompts: list[SectionPrompt] | None = None  # generation order; None: `positive` throughout


@torch.no_grad()
def encode_conditioning(models: FramePackModels, image: np.ndarray, request,
                        guides: Guides | None = None) -> JobConditioning:
    """Prompt, negative prompt and picture embeddings, and the pictures' latents; `image` is the bucket
    crop, `guides` the end picture, keyframes and timed prompts where the job has them."""
    guides = guides or Guides()
    enc, placement = models.encoders, models.placement
    true_cfg = request.cfg != 1.0
    timed = list(dict.fromkeys(p for s in guides.prompts or [] for p in (s.text, s.previous) if p is not None))
    prompts = [*(timed or [request.prompt]), *([request.negative_prompt] if true_cfg else [])]
    encoded = dict(zip(prompts, encode_prompts(models, prompts), strict=False))
    with placement.image_encoder():
        pixels = enc.feature_extractor.preprocess(images=image, return_tensors="pt")["pixel_values"]
        siglip = enc.image_encoder(pixel_values=pixels.to(enc.image_encoder.device, enc.image_encoder.dtype))
        image_tokens = siglip.last_hidden_state.cpu()
    positive = Conditioning(*encoded[prompts[0]], image_tokens)
    negative = Conditioning(*encoded[request.negative_prompt], image_tokens) if true_cfg else None
    with placement.vae():
        start = vae_latent(enc.vae, image, request.seed)
        end = vae_latent(enc.vae, guides.end, request.seed) if guides.end is not None else None
        keyframes = {index: vae_latent(enc.vae, picture, request.seed) for index, picture in guides.keyframes.items()}
    return JobConditioning(positive, negative, start, end, keyframes,
                           {p: Conditioning(*encoded[p], image_tokens) for p in timed}, guides.prompts)


def vae_latent(vae, image: np.ndarray, seed: int) -> torch.Tensor:
    """The picture's latent (1, 16, 1, h, w) fp32 on the CPU.

    The demos sample the VAE posterior from the unseeded global RNG; a generator of its own, seeded
    from the job's seed, makes the latent repeatable without touching the noise draws (and equal to the
    demos' when their global RNG is seeded with the same number just before). Every picture gets the
    same seed, so a loop's end latent is exactly its start latent.
    """
    # np.array copies: the picture may be a read-only view of PIL's buffer, which torch will not wrap
    x = torch.as_tensor(np.array(image)).float().div(127.5).sub(1.0).permute(2, 0, 1)[None, :, None]
    posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    latent = posterior.sample(generator=torch.Generator("cpu").manual_seed(seed)) * vae.config.scaling_factor
    return latent.float().cpu()


def encode_prompts(models: FramePackModels, prompts: list[str]) -> list[tuple[torch.Tensor, ...]]:
    """(text, mask, pooled) of each prompt on the CPU: from the prompt cache where it has them; the text
    encoders come to the GPU only for the others."""
    cache = models.prompt_cache
    found = [cache.get(p) if cache is not None else None for p in prompts]
    missing = [p for p, hit in zip(prompts, found, strict=True) if hit is None]
    if missing:
        with models.placement.text_encoders():
            made = {p: tuple(t.cpu() for t in encode_prompt(p, models.encoders)) for p in dict.fromkeys(missing)}
        if cache is not None:
            for prompt, tensors in made.items():
                cache.put(prompt, *tensors)
    return [hit if hit is not None else made[p] for p, hit in zip(prompts, found, strict=True)]


class SectionSampler:
    """Samples the sections of one job in generation order and keeps their packed history.

    The history is trimmed after each section to what later sections and decodes can reach, so memory
    stays flat with the video's length. `generator` draws each section's noise, as in the demos.
    """

    def __init__(self, models: FramePackModels, request, conditioning: JobConditioning,
                 history: torch.Tensor | None = None, generator_state: torch.Tensor | None = None):
        self.models, self.request = models, request
        self.variant, self.window, self.sections = request.variant, request.window, request.sections
        self.start_latent = conditioning.start_latent
        self.keyframe_latents = conditioning.keyframe_latents
        self.history = self._initial_history(conditioning.end_latent, request) if history is None else history
        self.generator = torch.Generator("cpu").manual_seed(request.seed)
        if generator_state is not None:
            self.generator.set_state(generator_state)
        device, dtype = models.device, models.transformer.dtype
        self.positive = conditioning.positive.to(device, dtype)
        self.timed = {prompt: c.to(device, dtype) for prompt, c in conditioning.timed.items()}
        self.section_prompts = conditioning.section_prompts
        self.negative = conditioning.negative.to(device, dtype) if conditioning.negative is not None else None
        self.guidance = Guidance(request.distilled_guidance, request.cfg, request.cfg_rescale)
        channels, height, width = self.start_latent.shape[1], *self.start_latent.shape[-2:]  # the VAE's, not retyped
        self.latent_shape = (1, channels, self.window, height, width)
        self.sigmas = flux_sigmas(request.steps, flux_mu(self.window * self.latent_shape[-2] * self.latent_shape[-1]
                                                         // 4)).to(device)
        self.layouts = sec.section_layouts(self.variant, self.sections, self.window)
        self.keep = max(sec.HISTORY_CONTEXT, 2 * self.window + 1)
        self.teacache = None
        if request.teacache > 0:
            self.teacache = TeaCache(request.teacache, models.placement.before_first_block)

    def sample(self, index: int, on_step: StepCallback | None = None, should_cancel=None, should_pause=None,
               partial: dict | None = None) -> torch.Tensor:
        """Sample section `index` (0-based, generation order) and add it to the history.

        Returns the sampled latents (1, 16, L, h, w) fp32 on the CPU. `partial` continues a section that a
        pause stopped between steps; a new pause raises Paused with `.partial` (what continues it) and
        `.start_state` (the generator before this section's draw) set.
        """
        start_state = self.generator.get_state()
        noise = self._noise(partial)
        positive, transformer = self._positive(index), self.models.transformer
        denoise = make_denoiser(self._model(partial), positive, self.negative, self._context(index), self.guidance)
        device = self.models.device
        try:
            with self.models.placement.transformer():
                prepare_section(transformer, embedding_inputs(positive, self.negative, self.guidance, self.sigmas,
                                                              transformer.dtype))
                generated = sample_unipc(denoise, noise.to(device), self.sigmas, on_step, should_cancel,
                                         should_pause, state=partial["sampler"] if partial else None).cpu()
                check_section(transformer)
        except Paused as paused:
            paused.partial = {"generator_state": self.generator.get_state(), "sampler": paused.state,
                              "teacache": self.teacache.state() if self.teacache is not None else None}
            paused.start_state = start_state
            raise
        self.add(index, generated)
        return generated

    def add(self, index: int, generated: torch.Tensor) -> None:
        """Put section `index`'s latents into the history (also to rebuild it from saved sections)."""
        history, _ = sec.extend_history(self.variant, self.history, generated, self.start_latent,
                                        self.layouts[index].is_last)
        self.history = sec.trim_history(self.variant, history, self.keep)

    def decode_window(self, index: int) -> torch.Tensor:
        """The latents the demos decode after section `index`: the new ones and their overlap."""
        from engine.stitch import chunk_latents

        return chunk_latents(self.variant, self.history, index, self.sections, self.window)

    def _noise(self, partial: dict | None) -> torch.Tensor:
        if partial is not None:  # this section's noise was drawn before the pause; the sampler state has x
            self.generator.set_state(partial["generator_state"])
            return torch.zeros(self.latent_shape)
        return torch.randn(self.latent_shape, generator=self.generator, dtype=torch.float32)

    def _initial_history(self, end_latent: torch.Tensor | None, request) -> torch.Tensor:
        """The zero history, with the end picture's latent (times its strength) in the slot the first section
        reads as the frame after its window, as FramePack-Studio and FramePack-eichi place it."""
        history = sec.initial_history(self.variant, self.start_latent)
        if end_latent is not None:
            history[:, :, :1] = end_latent * request.end_strength
        return history

    def _positive(self, index: int) -> Conditioning:
        """Section `index`'s prompt; a change's blend mixes the two prompts' text embeddings linearly, as
        Studio does, and attends to the tokens of both (Studio keeps only the earlier prompt's mask)."""
        if self.section_prompts is None:
            return self.positive
        part = self.section_prompts[index]
        new = self.timed[part.text]
        if part.previous is None:
            return new
        old, weight = self.timed[part.previous], part.weight
        return Conditioning(text=torch.lerp(old.text, new.text, weight), text_mask=old.text_mask | new.text_mask,
                            pooled=torch.lerp(old.pooled, new.pooled, weight), image=new.image)

    def _context(self, index: int) -> SectionContext:
        layout, device, dtype = self.layouts[index], self.models.device, self.models.transformer.dtype
        keyframe = keyframe_for(self.keyframe_latents, index)
        first = keyframe if keyframe is not None else self.start_latent  # the clean frame before the window
        clean, x2, x4 = sec.history_inputs(self.variant, self.history, first)
        return SectionContext(
            indices_noisy=layout.noisy.to(device),
            clean=clean.to(device, dtype),
            indices_clean=layout.clean.to(device),
            history_2x=x2.to(device, dtype),
            indices_2x=layout.history_2x.to(device),
            history_4x=x4.to(device, dtype),
            indices_4x=layout.history_4x.to(device),
        )

    def _model(self, partial: dict | None):
        if self.teacache is None:
            return self.models.transformer
        # The demos reset TeaCache's call counter to the step count even with true CFG, whose two calls a
        # step make it wrap halfway through the section: kept as they do it.
        self.teacache.reset(self.request.steps)
        if partial is not None and partial.get("teacache"):
            self.teacache.load_state(partial["teacache"], self.models.device)
        return TeaCacheTransformer(self.models.transformer, self.teacache)
