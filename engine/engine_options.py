"""How the engine runs the models: memory mode, compile, attention kernel, FP8; from settings to set-up.

`load_models(..., options=None)` keeps the plain behaviour (every model on the device, stock eager
forward). With options, `prepare_transformer` and `prepare_encoders` apply them once per loaded model and
`placement_for` says where each model sits during each phase of a job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from engine.memory_modes import MemoryMode, Offloaded, Placement, choose_memory_mode
from engine.offload import BlockStreamer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    memory_mode: str = "auto"  # auto | high | low
    compile: bool = True  # regional torch.compile of the blocks (CUDA only)
    attention: str = "auto"  # auto | sdpa | cudnn | flash | efficient
    fp8: bool = False  # FP8 linears in the blocks (Hopper, Ada): faster, slightly different results
    stream_slots: int = 2  # low-VRAM: device slots per block kind (2: one runs while the next loads)

    @classmethod
    def from_settings(cls, settings) -> EngineOptions:
        return cls(
            memory_mode=settings.engine_memory_mode,
            compile=settings.engine_compile,
            attention=settings.engine_attention,
            fp8=settings.engine_fp8,
            stream_slots=settings.engine_stream_slots,
        )

    def mode_for(self, device: torch.device) -> MemoryMode:
        return choose_memory_mode(self.memory_mode, device)


def _streamer(module: nn.Module) -> BlockStreamer | None:
    return getattr(module, "_framepack_streamer", None)


def prepare_transformer(transformer: nn.Module, device: torch.device, options: EngineOptions,
                        mode: MemoryMode) -> nn.Module:
    """Apply FP8, streaming (low mode), the attention kernel and compile; `transformer` may sit on the CPU."""
    from engine.fp8 import fp8_supported, quantize_blocks_fp8
    from engine.speed import compile_blocks, default_attention, repeated_blocks, set_block_attention

    if getattr(transformer, "_framepack_prepared", False):
        return transformer
    if options.fp8:
        if not fp8_supported(device):
            raise ValueError("ENGINE_FP8 needs an Ada or Hopper GPU (compute capability 8.9 or newer).")
        count = quantize_blocks_fp8(transformer, work_device=device)
        log.info("FP8: %d linears quantized", count)
    if mode is MemoryMode.LOW:
        transformer._framepack_streamer = BlockStreamer(
            transformer, repeated_blocks(transformer), slots=options.stream_slots, ahead=options.stream_slots - 1
        )
    else:
        transformer.to(device)
    attention = default_attention(device, options.fp8) if options.attention == "auto" else options.attention
    set_block_attention(transformer, attention)
    log.info("attention kernel in the blocks: %s", attention)
    if options.compile and device.type == "cuda":
        compile_blocks(transformer)
    transformer._framepack_prepared = True
    return transformer


def prepare_encoders(encoders, device: torch.device, mode: MemoryMode):
    """Low mode: Llama's layers stream, the small encoders and the VAE wait on the CPU, the VAE tiles."""
    if mode is MemoryMode.HIGH or _streamer(encoders.text_encoder) is not None:
        return encoders
    for module in (encoders.text_encoder_2, encoders.image_encoder, encoders.vae):
        module.to("cpu")
    encoders.vae.enable_tiling()  # SPEC: the low-VRAM VAE tiles
    encoders.text_encoder._framepack_streamer = BlockStreamer(
        encoders.text_encoder, encoders.text_encoder.layers, slots=2, ahead=1
    )
    return encoders


def placement_for(encoders, transformer: nn.Module, device: torch.device) -> Placement:
    llama, blocks = _streamer(encoders.text_encoder), _streamer(transformer)
    if llama is None or blocks is None:
        return Placement()
    return Offloaded(device, llama, encoders.text_encoder_2, encoders.image_encoder, encoders.vae, blocks)
