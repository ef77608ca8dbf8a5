"""High- and low-VRAM modes (SPEC.md section 8): which one to use, and where each model sits during a job.

High: every model stays on the GPU (about 61 GB at 640 px). Low: everything lives in CPU RAM; the
text encoders, SigLIP and the VAE visit the GPU only for their part of the job, Llama's and the
transformer's blocks stream through a few GPU slots (engine/offload.py), and the VAE decodes in tiles.
Peak GPU memory then stays under 6 GB whatever the video's length (4.3 GB for a whole 640 px job on an H100).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator

import torch
from torch import nn

from engine.offload import BlockStreamer

log = logging.getLogger(__name__)

HIGH_VRAM_FREE_BYTES = 60 * 2**30  # SPEC: high when more than 60 GB are free at start-up


class MemoryMode(str, enum.Enum):
    HIGH = "high"
    LOW = "low"


def free_device_bytes(device: torch.device) -> int:
    """Free memory as the official demos count it: the driver's free bytes plus our cached, unused ones."""
    free, _total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    return free + stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)


def choose_memory_mode(requested: str | None, device: torch.device, free_bytes: int | None = None) -> MemoryMode:
    """`requested` is auto, high or low; auto picks high when more than 60 GB are free (always on a CPU)."""
    requested = (requested or "auto").strip().lower()
    if requested in (MemoryMode.HIGH.value, MemoryMode.LOW.value):
        return MemoryMode(requested)
    if requested != "auto":
        raise ValueError(f"ENGINE_MEMORY_MODE must be auto, high or low, not {requested!r}.")
    if device.type != "cuda":
        return MemoryMode.HIGH  # nothing to save on the CPU
    free = free_device_bytes(device) if free_bytes is None else free_bytes
    mode = MemoryMode.HIGH if free > HIGH_VRAM_FREE_BYTES else MemoryMode.LOW
    log.info("%.1f GB free on %s: %s-VRAM mode", free / 2**30, device, mode.value)
    return mode


class Placement:
    """High-VRAM: every model already sits on the device and stays there; each phase is a no-op."""

    mode = MemoryMode.HIGH

    @contextlib.contextmanager
    def text_encoders(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def image_encoder(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def vae(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def transformer(self) -> Iterator[None]:
        yield

    def before_first_block(self) -> None:
        """TeaCache reads block 0's norm outside the block: nothing to fetch when it is resident."""


class Offloaded(Placement):
    """Low-VRAM: models on the CPU, each brought to `device` for its phase of the job and sent back."""

    mode = MemoryMode.LOW

    def __init__(self, device: torch.device, llama: BlockStreamer, text_encoder_2: nn.Module,
                 image_encoder: nn.Module, vae: nn.Module, blocks: BlockStreamer):
        self.device = device
        self.llama, self.blocks = llama, blocks
        self._clip, self._siglip, self._vae = text_encoder_2, image_encoder, vae

    def _release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _visit(self, *modules: nn.Module) -> Iterator[None]:
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            self._release()

    @contextlib.contextmanager
    def text_encoders(self) -> Iterator[None]:
        self.llama.attach(self.device)
        try:
            with self._visit(self._clip):
                yield
        finally:
            self.llama.detach()
            self._release()

    def image_encoder(self):
        return self._visit(self._siglip)

    def vae(self):
        return self._visit(self._vae)

    @contextlib.contextmanager
    def transformer(self) -> Iterator[None]:
        self.blocks.attach(self.device)
        try:
            yield
        finally:
            self.blocks.detach()
            self._release()

    def before_first_block(self) -> None:
        self.blocks.ready(0)
