"""The built full-size models placed as a memory plan says, for the benchmarks (engine_e2e, memory_plans):
the plan of one job is undone before the next one's is applied, and the transformer is compiled once."""

from __future__ import annotations

import torch

from engine.engine_options import EngineOptions, place_transformer, placement_for, prepare_encoders, prepare_transformer
from engine.memory_plan import MemoryPlan, high_plan, sizes_of_modules
from engine.models import FramePackModels
from engine.modulation import restore_modulation
from engine.prompt_cache import PromptCache
from engine.speed import repeated_blocks


def slow_down_streaming(transformer, llama, slow_cycles_per_byte: float) -> None:
    """Hold each streamer's copies to a slower link (0: as fast as this machine's)."""
    for module in (transformer, llama):
        streamer = getattr(module, "_framepack_streamer", None)
        if streamer is not None:
            streamer.slow_down(slow_cycles_per_byte)


def release(models: FramePackModels) -> None:
    """Undo the last plan: streamers closed (their blocks back in RAM), modulation linears back in their
    blocks, VAE untiled."""
    for module in (models.transformer, models.encoders.text_encoder):
        streamer = getattr(module, "_framepack_streamer", None)
        if streamer is not None:
            streamer.close()
            del module._framepack_streamer
    restore_modulation(models.transformer)
    models.encoders.vae.disable_tiling()
    models.encoders._framepack_prepared = False
    torch.cuda.empty_cache()


def place(models: FramePackModels, plan: MemoryPlan, options: EngineOptions, slow_cycles_per_byte: float,
          cache: PromptCache) -> FramePackModels:
    """The built models as `plan` places them; the transformer is compiled once, on the first plan."""
    device, transformer = models.device, models.transformer
    release(models)
    if not getattr(transformer, "_framepack_prepared", False):
        prepare_transformer(transformer, device, options, high_plan(sizes_of_modules(
            models.encoders, transformer, repeated_blocks(transformer))))
    place_transformer(transformer, device, options, plan)
    encoders = prepare_encoders(models.encoders, device, options, plan)
    slow_down_streaming(transformer, encoders.text_encoder, slow_cycles_per_byte)
    return FramePackModels(encoders, transformer, models.variant, device,
                           placement_for(encoders, transformer, device, plan), plan, cache)
