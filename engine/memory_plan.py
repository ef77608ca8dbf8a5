"""Where each model lives, from the GPU memory and host RAM the engine may use (README "Speed and memory").

A plan places each part of the stack:
- the transformer's 60 blocks: the first `resident_blocks` (in run order) stay on the GPU; the rest stream
  through two GPU slots per block kind, ahead of use, from pinned RAM or, when RAM is short, from a
  memory-mapped file (the page cache: the OS's to evict, no private copy);
- Llama (15 GB, needed once per prompt, and not at all when the prompt is in the prompt cache): on the
  GPU, streamed from pinned RAM, or streamed from a memory-mapped file;
- CLIP, SigLIP and the VAE: on the GPU, or visiting it for their phase of the job;
- the VAE decode: untiled where the memory left allows it, else in tiles.

The figures below are measured on an H100/H200 at 640x608 (benchmarks/README.md); a plan is a decision on
byte counts, with no device in sight, so the tests check it for a table of budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 2**30
CUDA_CONTEXT = int(0.8 * GB)  # the CUDA context and cuBLAS/cuDNN workspaces, outside torch's allocator
SAMPLING_WORKSPACE = int(2.5 * GB)  # a section's activations at 640x608 (the low-VRAM job peaked at 4.3 GB)
TEXT_WORKSPACE = int(1.0 * GB)
# A section's decode beyond the VAE's weights: untiled, the high-VRAM job on an H200 peaked at 60.65 GiB with
# 39.48 GiB of weights (benchmarks/results/2026-12-03_memory_plans_h200_call1.jsonl); in diffusers' default
# tiles the decode alone peaked at 4.6 GiB with its 0.5 GiB of weights.
VAE_UNTILED_DECODE = int(21.5 * GB)
VAE_TILED_DECODE = int(4.1 * GB)
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
# 283 MB (the block streamer's packed sizes), Llama 3 8B's 32 layers and embeddings in fp16.
FULL_SIZE = ModelSizes(
    blocks=(680_000_000,) * 20 + (283_000_000,) * 40,
    transformer_rest=780_000_000,
    llama=15_010_000_000,
    clip=246_000_000,
    siglip=857_000_000,
    vae=493_000_000,
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

    @property
    def streams_blocks(self) -> bool:
        return bool(self.blocks_from)

    def describe(self, sizes: ModelSizes) -> str:
        """One line for the worker's log."""
        streamed = sum(sizes.blocks[self.resident_blocks:])
        blocks = (f"transformer blocks {self.resident_blocks}/{len(sizes.blocks)} on the GPU"
                  + (f", {streamed / GB:.1f} GB streamed from {self.blocks_from} memory" if streamed else ""))
        encoders = "on the GPU" if self.encoders_on_gpu else "visiting"
        return (f"memory plan {self.name}: {blocks}; Llama {self.llama}; CLIP/SigLIP/VAE {encoders}; "
                f"VAE {'tiled' if self.vae_tiled else 'untiled'}; expected peak {self.gpu_bytes / GB:.1f} GB GPU, "
                f"{self.private_bytes / GB:.1f} GB private RAM")


def high_plan(sizes: ModelSizes) -> MemoryPlan:
    """Everything on the GPU, untiled decode: the official demos' high-VRAM mode."""
    gpu = CUDA_CONTEXT + sizes.everything + max(SAMPLING_WORKSPACE, VAE_UNTILED_DECODE)
    return MemoryPlan("high", len(sizes.blocks), "", "gpu", True, False, gpu, PROCESS_PRIVATE)


def low_plan(sizes: ModelSizes) -> MemoryPlan:
    """Everything in pinned RAM and streamed or visiting, tiled decode: the official low-VRAM mode."""
    slots = _slot_bytes(sizes, 0)
    gpu = CUDA_CONTEXT + sizes.transformer_rest + max(slots + SAMPLING_WORKSPACE, sizes.vae + VAE_TILED_DECODE)
    private = PROCESS_PRIVATE + sizes.transformer + sizes.llama + sizes.small_encoders
    return MemoryPlan("low", 0, "pinned", "pinned", False, True, gpu, private)


NAMED_PLANS = {"high": high_plan, "low": low_plan}  # ENGINE_MEMORY_MODE's names besides auto (the planner)


def _slot_bytes(sizes: ModelSizes, resident: int) -> int:
    """GPU slots for the streamed blocks: STREAM_SLOTS of each distinct block size that streams."""
    return STREAM_SLOTS * sum(set(sizes.blocks[resident:]))


def _resident_blocks(sizes: ModelSizes, room: int) -> int:
    """How many blocks, in run order, fit in `room` bytes besides the slots the others need."""
    count = len(sizes.blocks)
    while count > 0 and sum(sizes.blocks[:count]) + _slot_bytes(sizes, count) > room:
        count -= 1
    return count


def plan_memory(budget: Budget, sizes: ModelSizes = FULL_SIZE) -> MemoryPlan:
    """The fastest placement that fits the budget.

    The transformer runs every step, so its blocks get the GPU first; Llama runs once per prompt, so it
    is the first to stream; pinned RAM goes to the transformer's streamed blocks first.
    """
    high = high_plan(sizes)
    if high.gpu_bytes + FRAGMENTATION <= budget.vram and high.private_bytes <= budget.ram:
        return high
    usable_ram = max(budget.ram - RAM_RESERVE, 0)
    budget = Budget(budget.vram - FRAGMENTATION, budget.ram)
    # GPU: the resident blocks stay through every phase; the sampling (with the streaming slots) and the
    # decode (in tiles, with the VAE's weights) take turns beside them.
    fixed = CUDA_CONTEXT + sizes.transformer_rest
    room = budget.vram - fixed - max(SAMPLING_WORKSPACE, sizes.vae + VAE_TILED_DECODE)
    resident = _resident_blocks(sizes, room)
    encoders_on_gpu = resident == len(sizes.blocks) and room - sum(sizes.blocks) >= sizes.small_encoders
    held = fixed + sum(sizes.blocks[:resident]) + (sizes.small_encoders if encoders_on_gpu else 0)
    vae = 0 if encoders_on_gpu else sizes.vae  # a visiting VAE comes in for the decode
    vae_tiled = held + vae + VAE_UNTILED_DECODE > budget.vram
    decode = vae + (VAE_TILED_DECODE if vae_tiled else VAE_UNTILED_DECODE)
    phases = max(_slot_bytes(sizes, resident) + SAMPLING_WORKSPACE, decode)
    # Llama stays on the GPU only where it fits beside everything else in every phase.
    llama_on_gpu = held + sizes.llama + max(phases, TEXT_WORKSPACE) <= budget.vram
    gpu = held + max(phases, TEXT_WORKSPACE) + (sizes.llama if llama_on_gpu else 0)
    # Host: pinned copies of what streams while the RAM lasts (blocks first); the rest from the page cache.
    private = PROCESS_PRIVATE + (0 if encoders_on_gpu else sizes.small_encoders)
    streamed = sum(sizes.blocks[resident:])
    blocks_from = ""
    if streamed:
        blocks_from = "pinned" if private + streamed <= usable_ram else "mapped"
        private += streamed if blocks_from == "pinned" else _slot_bytes(sizes, resident)  # mapped: pinned staging
    # Llama runs once per new prompt: pinning it (locked memory the OS cannot reclaim) pays only where RAM
    # could hold it twice over; else it streams from the page cache, which gives its pages back when asked.
    if llama_on_gpu:
        llama = "gpu"
    elif private + 2 * sizes.llama <= usable_ram:
        llama, private = "pinned", private + sizes.llama
    else:
        llama, private = "mapped", private + STREAM_SLOTS * sizes.llama // LLAMA_LAYERS  # pinned staging
    name = "planned" if gpu <= budget.vram else "planned, over its GPU budget"
    return MemoryPlan(name, resident, blocks_from, llama, encoders_on_gpu, vae_tiled, gpu, private)


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

    from safetensors import safe_open

    found = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                part = weights.get_slice(key)
                count = 1
                for dim in part.get_shape():
                    count *= dim
                stored = _ITEMSIZE.get(part.get_dtype(), 2)
                found[key] = count * (itemsize if part.get_dtype().startswith(("F", "BF")) else stored)
    return found


def _block_sizes(tensors: dict[str, int]) -> tuple[tuple[int, ...], int]:
    """The transformer's blocks in run order (dual-stream, then single-stream) and the rest."""
    blocks: dict[tuple[int, int], int] = {}
    rest = 0
    for key, nbytes in tensors.items():
        kind = next((k for k, prefix in enumerate(_BLOCK_KEYS) if key.startswith(prefix)), None)
        if kind is None:
            rest += nbytes
            continue
        index = int(key[len(_BLOCK_KEYS[kind]):].split(".", 1)[0])
        blocks[(kind, index)] = blocks.get((kind, index), 0) + nbytes
    return tuple(blocks[k] for k in sorted(blocks)), rest


def sizes_from_folders(transformer_root, hunyuan_root, redux_root, text_itemsize: int = 2,
                       transformer_itemsize: int = 2, fp8_blocks: bool = False) -> ModelSizes:
    """ModelSizes of the weights on disk as they will be loaded (fp16 encoders, bf16 transformer), from the
    safetensors headers alone, so the plan is made before anything is loaded."""
    from pathlib import Path

    blocks, rest = _block_sizes(_tensor_bytes(Path(transformer_root), transformer_itemsize))
    if fp8_blocks:  # the linears' weights at one byte, their scales beside them
        blocks = tuple(int(b * 0.52) for b in blocks)

    def total(folder) -> int:
        return sum(_tensor_bytes(folder, text_itemsize).values())

    hunyuan, redux = Path(hunyuan_root), Path(redux_root)
    return ModelSizes(blocks, rest, total(hunyuan / "text_encoder"), total(hunyuan / "text_encoder_2"),
                      total(redux / "image_encoder"), total(hunyuan / "vae"))


def sizes_of_modules(encoders, transformer, blocks) -> ModelSizes:
    """ModelSizes of models already in memory (the benchmarks' random weights)."""

    def nbytes(module) -> int:
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    block_bytes = tuple(nbytes(b) for b in blocks)
    return ModelSizes(block_bytes, nbytes(transformer) - sum(block_bytes), nbytes(encoders.text_encoder),
                      nbytes(encoders.text_encoder_2), nbytes(encoders.image_encoder), nbytes(encoders.vae))
