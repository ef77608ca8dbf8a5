"""Where each model lives, from the GPU memory and host RAM the engine may use (README "Speed and memory").

A plan places each part of the stack:
- the transformer's 60 blocks: the first `resident_blocks` (in run order) stay on the GPU; the rest stream
  through two GPU slots per block kind, ahead of use, from pinned RAM or, when RAM is short, from a
  memory-mapped file (the page cache: the OS's to evict, no private copy);
- where the blocks do not all fit whole, their AdaLN modulation linears (a third of a dual-stream block)
  stay in RAM and visit once per section (engine/modulation.py): more blocks fit, fewer bytes stream;
- Llama (15 GB, needed once per prompt, and not at all when the prompt is in the prompt cache): on the
  GPU, streamed from pinned RAM, or streamed from a memory-mapped file;
- CLIP, SigLIP and the VAE: on the GPU, or visiting it for their phase of the job (from pinned RAM);
- the VAE decode: untiled where the memory left allows it, else in tiles.

The figures below are measured on an H100/H200 at 640x608 (benchmarks/README.md); a plan is a decision on
byte counts, with no device in sight, so the tests check it for a table of budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 2**30
CUDA_CONTEXT = int(0.8 * GB)  # the CUDA context and cuBLAS/cuDNN workspaces, outside torch's allocator
# A section's activations at 640x608: the 8 / 16 job, with 0.73 GiB of non-block weights and 1.79 GiB of
# slots, peaked at 4.25 GiB (benchmarks/results/2026-12-03_memory_plans_loaded_h200_b.jsonl), so at most 1.73.
SAMPLING_WORKSPACE = int(1.8 * GB)
# The precomputed modulation's rows (2.2 MB per model call: 25 steps with true CFG are 110 MB) and the one
# linear visiting while they are worked out.
MODULATION_TABLE = int(0.25 * GB)
TEXT_WORKSPACE = int(1.0 * GB)
# A section's decode beyond the VAE's weights: untiled, the high-VRAM job on an H200 peaked at 60.65 GiB with
# 39.48 GiB of weights (benchmarks/results/2026-12-03_memory_plans_h200_call1.jsonl); in diffusers' default
# tiles the 24 / 32 job peaked 4.26 GiB above its resident blocks and the 8 / 16 job at 4.25 GiB, the
# VAE's 0.46 GiB of weights included (2026-12-03_memory_plans_loaded_h200_b.jsonl).
VAE_UNTILED_DECODE = int(21.5 * GB)
VAE_TILED_DECODE = int(3.8 * GB)
# Tiles of 384 px every 320 (diffusers' 64 px overlap) where the room is there: a section's decode took 2.68 s
# against 4.19 s in the default 256 px tiles with the fast decoder on an H200 (4.37 / 6.28 s eager), for 4.4 GiB
# more (benchmarks/results/2026-12-03_vae_decode_fast_h200.jsonl, eager's 8.12 - 3.73 GiB), and its pixels are
# nearer the untiled decode's (35.4 dB against 30.5 dB, random weights).
DEFAULT_TILE, WIDE_TILE = 256, 384
VAE_WIDE_TILED_DECODE = VAE_TILED_DECODE + int(4.4 * GB)
TILE_OVERLAP = 64  # px, diffusers' default (256 every 192)
# What torch's caching allocator holds beyond the live tensors (a 48 GiB budget with a 45 GiB estimate ran
# out of memory in the same run): every GPU estimate leaves this much.
FRAGMENTATION = int(1.5 * GB)
# Python, torch, the CUDA context's host side and the job's host tensors: the high-VRAM job's VmRSS less its
# mapped files peaked at 3.9 GiB (benchmarks/results/2026-12-03_memory_plans_h200_call1.jsonl).
PROCESS_PRIVATE = int(4.0 * GB)
RAM_RESERVE = int(4.0 * GB)  # left to the OS and the page cache out of the RAM budget
STREAM_SLOTS = 2  # GPU slots per block kind while streaming: one runs while the next loads
LLAMA_LAYERS = 32  # Llama 3 8B's decoder layers, the blocks it streams in


@dataclass(frozen=True)
class Budget:
    vram: int  # bytes the engine may hold on the GPU
    ram: int  # bytes of host RAM the engine may use (private memory and what it pins)


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each part, as loaded (bf16 transformer, fp16 encoders)."""

    blocks: tuple[int, ...]  # the transformer's repeated blocks, in run order
    transformer_rest: int  # embedders, refiner, norms, projections
    llama: int
    clip: int
    siglip: int
    vae: int
    modulation: tuple[int, ...] = ()  # each block's AdaLN modulation linears, included in `blocks`

    @property
    def lean_blocks(self) -> tuple[int, ...]:
        """The blocks without their modulation linears (engine/modulation.py keeps those in RAM)."""
        return tuple(b - m for b, m in zip(self.blocks, self.modulation or (0,) * len(self.blocks), strict=True))

    @property
    def transformer(self) -> int:
        return sum(self.blocks) + self.transformer_rest

    @property
    def small_encoders(self) -> int:
        return self.clip + self.siglip + self.vae

    @property
    def everything(self) -> int:
        return self.transformer + self.llama + self.small_encoders


# The full-size stack (SPEC.md section 1): 20 dual-stream blocks of 680 MB and 40 single-stream ones of
# 283 MB (the block streamer's packed sizes), of which 227 MB and 57 MB are AdaLN modulation (6 x 3072 and
# 3 x 3072 outputs from 3072 inputs, bf16); Llama 3 8B's 32 layers and embeddings in fp16.
FULL_SIZE = ModelSizes(
    blocks=(680_000_000,) * 20 + (283_000_000,) * 40,
    transformer_rest=780_000_000,
    llama=15_010_000_000,
    clip=246_000_000,
    siglip=857_000_000,
    vae=493_000_000,
    modulation=(2 * 2 * (6 * 3072 + 1) * 3072,) * 20 + (2 * (3 * 3072 + 1) * 3072,) * 40,
)


@dataclass(frozen=True)
class MemoryPlan:
    name: str  # high | low | planned
    resident_blocks: int  # the first N transformer blocks stay on the GPU
    blocks_from: str  # where streamed blocks come from: "pinned" | "mapped" | "" (none streamed)
    llama: str  # "gpu" | "pinned" | "mapped"
    encoders_on_gpu: bool  # CLIP, SigLIP and the VAE stay on the GPU (else they visit for their phase)
    vae_tiled: bool
    gpu_bytes: int  # the expected peak on the GPU
    private_bytes: int  # the expected private host memory (pinned copies included)
    modulation: str = ""  # the AdaLN linears kept off the GPU: "pinned" | "mapped" | "" (in their blocks)
    vae_tile: int = DEFAULT_TILE  # px, where vae_tiled

    @property
    def streams_blocks(self) -> bool:
        return bool(self.blocks_from)

    def describe(self, sizes: ModelSizes) -> str:
        """One line for the worker's log."""
        streamed = sum((sizes.lean_blocks if self.modulation else sizes.blocks)[self.resident_blocks:])
        blocks = (f"transformer blocks {self.resident_blocks}/{len(sizes.blocks)} on the GPU"
                  + (f", {streamed / GB:.1f} GB streamed from {self.blocks_from} memory" if streamed else "")
                  + (f", AdaLN modulation from {self.modulation} RAM once per section" if self.modulation else ""))
        encoders = "on the GPU" if self.encoders_on_gpu else "visiting"
        vae = f"tiled ({self.vae_tile} px)" if self.vae_tiled else "untiled"
        return (f"memory plan {self.name}: {blocks}; Llama {self.llama}; CLIP/SigLIP/VAE {encoders}; "
                f"VAE {vae}; expected peak {self.gpu_bytes / GB:.1f} GB GPU, "
                f"{self.private_bytes / GB:.1f} GB private RAM")


def high_plan(sizes: ModelSizes) -> MemoryPlan:
    """Everything on the GPU, untiled decode: the official demos' high-VRAM mode."""
    gpu = CUDA_CONTEXT + sizes.everything + max(SAMPLING_WORKSPACE, VAE_UNTILED_DECODE)
    return MemoryPlan("high", len(sizes.blocks), "", "gpu", True, False, gpu, PROCESS_PRIVATE)


def low_plan(sizes: ModelSizes) -> MemoryPlan:
    """Everything in pinned RAM and streamed or visiting, tiled decode: the official low-VRAM mode (with the
    modulation worked out per section, which leaves the video as it was and streams a quarter less)."""
    lean = _lean(sizes)
    slots = _slot_bytes(lean.blocks, 0)
    gpu = CUDA_CONTEXT + max(sizes.transformer_rest + slots + SAMPLING_WORKSPACE + MODULATION_TABLE,
                             sizes.vae + VAE_TILED_DECODE)
    private = PROCESS_PRIVATE + sizes.transformer + sizes.llama + sizes.small_encoders
    return MemoryPlan("low", 0, "pinned", "pinned", False, True, gpu, private, "pinned" if sizes.modulation else "")


NAMED_PLANS = {"high": high_plan, "low": low_plan}  # ENGINE_MEMORY_MODE's names besides auto (the planner)


def _lean(sizes: ModelSizes) -> ModelSizes:
    """The sizes as placed when the modulation linears stay in RAM: blocks without them, none in the blocks."""
    return replace(sizes, blocks=sizes.lean_blocks, modulation=())


def _slot_bytes(blocks: tuple[int, ...], resident: int) -> int:
    """GPU slots for the streamed blocks: STREAM_SLOTS of each distinct block size that streams."""
    return STREAM_SLOTS * sum(set(blocks[resident:]))


def _sampling_bytes(sizes: ModelSizes, resident: int, lean: bool) -> int:
    """Besides what stays, while a section samples: the slots, activations, the modulation's rows, and the
    non-block weights where a streamer brings them in (with nothing streamed they stay: see _kept)."""
    streams = resident < len(sizes.blocks)
    table = MODULATION_TABLE if lean else 0
    return (sizes.transformer_rest if streams else 0) + _slot_bytes(sizes.blocks, resident) + SAMPLING_WORKSPACE + table


def _kept(sizes: ModelSizes, resident: int) -> int:
    """What stays on the GPU through every phase: the resident blocks, and the rest when nothing streams."""
    return sum(sizes.blocks[:resident]) + (sizes.transformer_rest if resident == len(sizes.blocks) else 0)


def _resident_blocks(sizes: ModelSizes, room: int, decode: int, lean: bool) -> int:
    """How many blocks, in run order, stay in `room` bytes beside the larger of a section's sampling (with
    the slots the others need) and its decode."""
    count = len(sizes.blocks)
    while count > 0 and _kept(sizes, count) + max(_sampling_bytes(sizes, count, lean), decode) > room:
        count -= 1
    return count


def plan_memory(budget: Budget, sizes: ModelSizes = FULL_SIZE) -> MemoryPlan:
    """The fastest placement that fits the budget.

    The transformer runs every step, so its blocks get the GPU first, whole where they all fit, else without
    their modulation linears; Llama runs once per prompt, so it is the first to stream; pinned RAM goes to
    the transformer's streamed blocks first.
    """
    high = high_plan(sizes)
    if high.gpu_bytes + FRAGMENTATION <= budget.vram and high.private_bytes <= budget.ram:
        return high
    usable_ram = max(budget.ram - RAM_RESERVE, 0)
    room = budget.vram - FRAGMENTATION - CUDA_CONTEXT
    tiled_decode = sizes.vae + VAE_TILED_DECODE  # the VAE visits for it unless it stays (see below)
    placed, lean = sizes, False
    resident = _resident_blocks(sizes, room, tiled_decode, lean)
    if resident < len(sizes.blocks) and sizes.modulation:
        placed, lean = _lean(sizes), True
        resident = _resident_blocks(placed, room, tiled_decode, lean)
    blocks = placed.blocks
    held = _kept(placed, resident)
    sampling = _sampling_bytes(placed, resident, lean)
    encoders_on_gpu = resident == len(blocks) and held + sizes.small_encoders + max(sampling, tiled_decode) <= room
    if encoders_on_gpu:
        held += sizes.small_encoders
    vae = 0 if encoders_on_gpu else sizes.vae  # a visiting VAE comes in for the decode
    vae_tiled = held + vae + VAE_UNTILED_DECODE > room
    phases = max(sampling, vae + (VAE_TILED_DECODE if vae_tiled else VAE_UNTILED_DECODE), TEXT_WORKSPACE)
    # Llama stays on the GPU only where it fits beside everything else in every phase.
    llama_on_gpu = held + sizes.llama + phases <= room
    llama_held = sizes.llama if llama_on_gpu else 0
    # Wider tiles only in room nothing else was given: never a block streamed or Llama moved for them.
    vae_tile = DEFAULT_TILE
    if vae_tiled and held + llama_held + vae + VAE_WIDE_TILED_DECODE <= room:
        vae_tile, phases = WIDE_TILE, max(phases, vae + VAE_WIDE_TILED_DECODE)
    gpu = CUDA_CONTEXT + held + phases + llama_held
    # Host: pinned copies of what streams while the RAM lasts (blocks first); the rest from the page cache.
    private = PROCESS_PRIVATE + (0 if encoders_on_gpu else sizes.small_encoders)
    streamed = sum(blocks[resident:])
    blocks_from = ""
    if streamed:
        blocks_from = "pinned" if private + streamed <= usable_ram else "mapped"
        private += streamed if blocks_from == "pinned" else _slot_bytes(blocks, resident)  # mapped: pinned staging
    modulation = ""
    if lean:  # the modulation linears visit once per section: pinned where RAM allows
        modulation = "pinned" if private + sum(sizes.modulation) <= usable_ram else "mapped"
        private += sum(sizes.modulation) if modulation == "pinned" else 0
    # Llama runs once per new prompt: pinning it (locked memory the OS cannot reclaim) pays only where RAM
    # could hold it twice over; else it streams from the page cache, which gives its pages back when asked.
    if llama_on_gpu:
        llama = "gpu"
    elif private + 2 * sizes.llama <= usable_ram:
        llama, private = "pinned", private + sizes.llama
    else:
        llama, private = "mapped", private + STREAM_SLOTS * sizes.llama // LLAMA_LAYERS  # pinned staging
    name = "planned" if gpu + FRAGMENTATION <= budget.vram else "planned, over its GPU budget"
    return MemoryPlan(name, resident, blocks_from, llama, encoders_on_gpu, vae_tiled, gpu, private, modulation,
                      vae_tile)


def load_peak(plan: MemoryPlan, sizes: ModelSizes) -> int:
    """Private RAM while the weights load: what the plan keeps in RAM, plus one block being packed.

    The loaders map safetensors files lazily (their pages are the page cache's, not the process's) when a
    file holds the dtype it is loaded in, as the Hub's checkpoints do; a streamer casts its blocks one at a
    time, and a model bound for the GPU is cast there, so no model is ever held whole in private RAM.
    """
    return plan.private_bytes + max(sizes.blocks, default=0)


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1,
             "I8": 1, "BOOL": 1}
_BLOCK_KEYS = ("transformer_blocks.", "single_transformer_blocks.")


def _tensor_bytes(folder, itemsize: int) -> dict[str, int]:
    """Bytes of every tensor in a folder's safetensors files, as loaded at `itemsize` bytes per float
    (read from the files' headers: nothing is loaded)."""
    from pathlib import Path

    found = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        found.update(file_tensor_bytes(path, itemsize))
    return found


def file_tensor_bytes(path, itemsize: int) -> dict[str, int]:
    """Bytes of every tensor in one safetensors file, as loaded at `itemsize` bytes per float (from its
    header)."""
    from safetensors import safe_open

    found = {}
    with safe_open(str(path), "pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            part = weights.get_slice(key)
            count = 1
            for dim in part.get_shape():
                count *= dim
            stored = _ITEMSIZE.get(part.get_dtype(), 2)
            found[key] = count * (itemsize if part.get_dtype().startswith(("F", "BF")) else stored)
    return found


def _block_sizes(tensors: dict[str, int], modulation_prefixes: set[str]) -> tuple[tuple[int, ...], int, tuple]:
    """The transformer's blocks in run order (dual-stream, then single-stream), the rest, and each block's
    bytes of AdaLN modulation (the tensors under `modulation_prefixes`)."""
    blocks: dict[tuple[int, int], int] = {}
    modulation: dict[tuple[int, int], int] = {}
    rest = 0
    for key, nbytes in tensors.items():
        kind = next((k for k, prefix in enumerate(_BLOCK_KEYS) if key.startswith(prefix)), None)
        if kind is None:
            rest += nbytes
            continue
        index = int(key[len(_BLOCK_KEYS[kind]):].split(".", 1)[0])
        blocks[(kind, index)] = blocks.get((kind, index), 0) + nbytes
        if key.rsplit(".", 1)[0] in modulation_prefixes:
            modulation[(kind, index)] = modulation.get((kind, index), 0) + nbytes
    order = sorted(blocks)
    return tuple(blocks[k] for k in order), rest, tuple(modulation.get(k, 0) for k in order)


def _modulation_prefixes(transformer_root) -> set[str]:
    """The module names of the AdaLN linears in the blocks, from the transformer's own class built on the meta
    device from its config (nothing is allocated)."""
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle

    config = HunyuanVideoFramepackTransformer3DModel.load_config(str(transformer_root))
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(config)
    return {f"{name}.linear" for name, module in model.named_modules()
            if isinstance(module, (AdaLayerNormZero, AdaLayerNormZeroSingle)) and name.startswith(_BLOCK_KEYS)}


def sizes_from_folders(transformer_root, hunyuan_root, redux_root, text_itemsize: int = 2,
                       transformer_itemsize: int = 2, fp8_blocks: bool = False) -> ModelSizes:
    """ModelSizes of the weights on disk as they will be loaded (fp16 encoders, bf16 transformer), from the
    safetensors headers and the transformer's config alone, so the plan is made before anything is loaded."""
    from pathlib import Path

    blocks, rest, modulation = _block_sizes(_tensor_bytes(Path(transformer_root), transformer_itemsize),
                                            _modulation_prefixes(transformer_root))
    if fp8_blocks:  # the linears' weights at one byte, their scales beside them (the modulation stays bf16)
        blocks = tuple(int((b - m) * 0.52) + m for b, m in zip(blocks, modulation, strict=True))

    def total(folder) -> int:
        return sum(_tensor_bytes(folder, text_itemsize).values())

    hunyuan, redux = Path(hunyuan_root), Path(redux_root)
    return ModelSizes(blocks, rest, total(hunyuan / "text_encoder"), total(hunyuan / "text_encoder_2"),
                      total(redux / "image_encoder"), total(hunyuan / "vae"), modulation)


def sizes_of_modules(encoders, transformer, blocks) -> ModelSizes:
    """ModelSizes of models already in memory (the benchmarks' random weights)."""

    def nbytes(module) -> int:
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    from engine.modulation import adaln_layers

    block_bytes = tuple(nbytes(b) for b in blocks)
    modulation = tuple(sum(nbytes(norm.linear) for norm in adaln_layers([b])) for b in blocks)
    return ModelSizes(block_bytes, nbytes(transformer) - sum(block_bytes), nbytes(encoders.text_encoder),
                      nbytes(encoders.text_encoder_2), nbytes(encoders.image_encoder), nbytes(encoders.vae),
                      modulation)
