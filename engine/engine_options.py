"""How the engine runs the models: memory plan, compile, attention kernel, FP8; from settings to set-up.

`load_models(..., options=None)` keeps the plain behaviour (every model on the device, stock eager
forward). With options, `choose_plan` decides where each model lives (engine/memory_plan.py),
`prepare_transformer` and `prepare_encoders` apply the plan and the speed options once per loaded model,
and `placement_for` says where each model sits during each phase of a job.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.memory_modes import Offloaded, Placement, available_ram_bytes, free_device_bytes
from engine.memory_plan import (
    GB,
    NAMED_PLANS,
    TILE_OVERLAP,
    Budget,
    MemoryPlan,
    ModelSizes,
    high_plan,
    plan_memory,
)
from engine.offload import BlockStreamer
from engine.spatial_tiles import decode_in_spatial_tiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    memory_mode: str = "auto"  # auto (the planner) | high | low
    compile: bool = True  # regional torch.compile of the blocks (CUDA only)
    compile_vae: bool = False  # and of the VAE's decoder, with `compile` (ENGINE_COMPILE_VAE: see settings)
    fast_decode: bool = True  # the eager decoder's work regrouped (engine/fast_decode.py; ENGINE_FAST_DECODE)
    attention: str = "auto"  # auto | sdpa | cudnn | flash | efficient
    fp8: bool = False  # FP8 linears in the blocks: faster on Hopper/Ada, half the memory anywhere; results change
    fp8_storage_only: bool = False  # FP8 weights, bf16 products even where FP8 tensor cores exist (benchmarks)
    stream_slots: int = 2  # device slots per streamed block kind (2: one runs while the next loads)
    vram_gb: float | None = None  # the GPU memory the plan may use (default: what is free at start)
    ram_gb: float | None = None  # the host RAM the plan may use (default: what is available at start)
    cache_dir: Path | None = None  # memory-mapped block files (default: the Hugging Face cache's folder)
    lora_dir: Path | None = None  # the LoRAs jobs may pick: the plan leaves GPU memory for the largest

    @classmethod
    def from_settings(cls, settings) -> EngineOptions:
        return cls(
            memory_mode=settings.engine_memory_mode,
            compile=settings.engine_compile,
            compile_vae=settings.engine_compile_vae,
            fast_decode=settings.engine_fast_decode,
            attention=settings.engine_attention,
            fp8=settings.engine_fp8,
            stream_slots=settings.engine_stream_slots,
            vram_gb=settings.engine_vram_gb,
            ram_gb=settings.engine_ram_gb,
            cache_dir=Path(settings.data_dir) / "cache",
            lora_dir=settings.lora_dir,
        )

    def budget(self, device: torch.device) -> Budget:
        """The memory the plan may place models in: the GPU's less what the LoRAs of a job may need."""
        from engine.lora import gpu_reserve_bytes

        vram = self.vram_gb * GB if self.vram_gb is not None else free_device_bytes(device)
        ram = self.ram_gb * GB if self.ram_gb is not None else available_ram_bytes()
        loras = gpu_reserve_bytes(self.lora_dir)
        if loras:
            log.info("memory plan: %.2f GB of the GPU left for LoRAs (the largest files in %s)", loras / GB,
                     self.lora_dir)
        return Budget(int(max(vram - loras, 0)), int(ram))


def choose_plan(options: EngineOptions, device: torch.device, sizes: ModelSizes) -> MemoryPlan:
    """`high` and `low` are the named plans; `auto` plans from the budget (on a CPU without a budget given,
    everything simply stays in memory)."""
    mode = (options.memory_mode or "auto").strip().lower()
    if mode in NAMED_PLANS:
        return NAMED_PLANS[mode](sizes)
    if mode != "auto":
        raise ValueError(f"ENGINE_MEMORY_MODE must be auto, high or low, not {mode!r}.")
    if device.type != "cuda" and options.vram_gb is None:
        return high_plan(sizes)
    return plan_memory(options.budget(device), sizes)


def mapped_file(options: EngineOptions, name: str, identity: str) -> Path:
    """Where a model's streamed blocks are kept as a memory-mapped file, one per weights and layout."""
    root = options.cache_dir or Path.home() / ".cache" / "framepack-bot"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(root) / "mapped" / f"{name}-{digest}.bin"


def _streamer(module: nn.Module) -> BlockStreamer | None:
    return getattr(module, "_framepack_streamer", None)


def prepare_transformer(transformer: nn.Module, device: torch.device, options: EngineOptions,
                        plan: MemoryPlan) -> nn.Module:
    """Apply FP8, the plan's placement, the attention kernel and compile; `transformer` may sit on the CPU."""
    from engine.fp8 import fp8_supported, quantize_blocks_fp8
    from engine.speed import compile_blocks, default_attention, set_block_attention

    if getattr(transformer, "_framepack_prepared", False):
        return transformer
    fp8_products = options.fp8 and fp8_supported(device) and not options.fp8_storage_only
    if options.fp8:
        count = quantize_blocks_fp8(transformer, work_device=device, compute=fp8_products)
        log.info("FP8: %d linears quantized, %s", count, "products on the FP8 tensor cores" if fp8_products else
                 "stored in FP8 and widened to bf16 at each call (half the memory; no FP8 tensor cores used)")
    place_transformer(transformer, device, options, plan)
    attention = default_attention(device, fp8_products) if options.attention == "auto" else options.attention
    set_block_attention(transformer, attention)
    log.info("attention kernel in the blocks: %s", attention)
    if options.compile and device.type == "cuda":
        compile_blocks(transformer)
    transformer._framepack_prepared = True
    return transformer


def place_transformer(transformer: nn.Module, device: torch.device, options: EngineOptions, plan: MemoryPlan) -> None:
    """The plan's home for the blocks: all on the device, or the first ones there and the rest streamed from
    pinned RAM or a mapped file; the AdaLN modulation linears kept in RAM where the plan says so."""
    from engine.modulation import precompute_modulation
    from engine.speed import repeated_blocks

    if plan.modulation:
        moved = precompute_modulation(transformer, repeated_blocks(transformer),
                                      pin=plan.modulation == "pinned" and device.type == "cuda")
        log.info("AdaLN modulation: %.2f GB of linears kept in RAM, worked out once per section", moved / 1e9)
    if not plan.streams_blocks:
        transformer.to(device)  # the modulation linears, not submodules any more, stay where they are
        return
    source = None
    if plan.blocks_from == "mapped":
        layout = (options.fp8, options.fp8_storage_only, plan.resident_blocks, bool(plan.modulation))
        identity = f"{getattr(transformer, '_framepack_source', 'in memory')}|{layout}"
        source = mapped_file(options, "transformer", identity)
    transformer._framepack_streamer = BlockStreamer(
        transformer, repeated_blocks(transformer), slots=options.stream_slots, ahead=options.stream_slots - 1,
        pin=plan.blocks_from == "pinned" and device.type == "cuda", resident=plan.resident_blocks,
        mapped_file=source, resident_device=device,
    )


def prepare_encoders(encoders, device: torch.device, options: EngineOptions, plan: MemoryPlan):
    """Llama on the GPU or streamed (pinned or mapped); CLIP, SigLIP and the VAE on the GPU or in RAM
    between their phases; the VAE tiled where the plan says so, its decoder compiled with the blocks (or
    rewritten by engine/fast_decode.py), each section's decode reusing the tiles it shares with the last."""
    if getattr(encoders, "_framepack_prepared", False):
        return encoders
    small = (encoders.text_encoder_2, encoders.image_encoder, encoders.vae)
    for module in small:
        module.to(device if plan.encoders_on_gpu else "cpu")
    if plan.vae_tiled:
        tile = plan.vae_tile
        encoders.vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                                   tile_sample_stride_height=tile - TILE_OVERLAP,
                                   tile_sample_stride_width=tile - TILE_OVERLAP)
        # without the edge strips a whole tile already covers, unless the decode is to be diffusers' exactly
        decode_in_spatial_tiles(encoders.vae, skip_covered=options.fast_decode)
    if options.compile and options.compile_vae and device.type == "cuda":
        from engine.speed import compile_vae_decoder

        compile_vae_decoder(encoders.vae)
    elif options.fast_decode:
        from engine.fast_decode import speed_up_decoder

        if not speed_up_decoder(encoders.vae):
            log.warning("the VAE's decoder is not the one engine/fast_decode.py knows: decoding as diffusers does")
    from engine.decoded_tiles import reuse_decoded_tiles

    reuse_decoded_tiles(encoders.vae)  # last: in front of whatever decoder forward the lines above chose
    llama = encoders.text_encoder
    if plan.llama == "gpu":
        llama.to(device)
    else:
        source = None
        if plan.llama == "mapped":
            source = mapped_file(options, "llama", str(getattr(llama, "_framepack_source", "in memory")))
        # the layers may still hold the checkpoint's dtype (see load_encoders): cast as they are packed
        llama._framepack_streamer = BlockStreamer(llama, llama.layers, slots=2, ahead=1,
                                                  pin=plan.llama == "pinned" and device.type == "cuda",
                                                  mapped_file=source, dtype=llama.embed_tokens.weight.dtype)
    encoders._framepack_prepared = True
    return encoders


def placement_for(encoders, transformer: nn.Module, device: torch.device, plan: MemoryPlan) -> Placement:
    llama, blocks = _streamer(encoders.text_encoder), _streamer(transformer)
    if llama is None and blocks is None and plan.encoders_on_gpu:
        return Placement()
    visiting = {} if plan.encoders_on_gpu else {"text": [encoders.text_encoder_2], "image": [encoders.image_encoder],
                                                 "vae": [encoders.vae]}
    return Offloaded(device, llama, visiting, blocks)
