"""Where each model sits during each phase of a job, as the memory plan (engine/memory_plan.py) decides.

`Placement` is the all-on-the-GPU case: every phase is a no-op. `Offloaded` brings what the plan keeps
off the GPU in for its phase: Llama's layers stream while the prompt is encoded, CLIP, SigLIP and the VAE
visit for theirs, the transformer's streamed blocks run through their slots while a section samples.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from engine.host_memory import mem_available_bytes, own_anonymous_bytes
from engine.offload import BlockStreamer, VisitingWeights

log = logging.getLogger(__name__)


def free_device_bytes(device: torch.device) -> int:
    """Free memory as the official demos count it: the driver's free bytes plus our cached, unused ones."""
    free, _total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    return free + stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)


def available_ram_bytes() -> int:
    """Host RAM the kernel could give us now without swapping (MemAvailable), plus what we already hold."""
    return mem_available_bytes() + own_anonymous_bytes()


class Placement:
    """Every model already sits on the device and stays there; each phase is a no-op."""

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
    """Models the plan keeps off the GPU, each brought to `device` for its phase of the job and sent back.

    `llama` and `blocks` are streamers (None: that model stays on the GPU); `visiting` maps a phase
    ("text", "image", "vae") to the modules that come in for it, their weights kept in pinned RAM.
    """

    def __init__(self, device: torch.device, llama: BlockStreamer | None, visiting: dict[str, list[nn.Module]],
                 blocks: BlockStreamer | None):
        self.device = device
        self.llama, self.blocks = llama, blocks
        pin = device.type == "cuda"
        self.visiting = {phase: [VisitingWeights.of(module, pin) for module in modules]
                         for phase, modules in visiting.items()}

    def _release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _visit(self, phase: str) -> Iterator[None]:
        modules = self.visiting.get(phase, [])
        for module in modules:
            module.visit(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.leave()
            if modules:
                self._release()

    @contextlib.contextmanager
    def text_encoders(self) -> Iterator[None]:
        if self.llama is not None:
            self.llama.attach(self.device)
        try:
            with self._visit("text"):
                yield
        finally:
            if self.llama is not None:
                self.llama.detach()
                self._release()

    def image_encoder(self):
        return self._visit("image")

    def vae(self):
        return self._visit("vae")

    @contextlib.contextmanager
    def transformer(self) -> Iterator[None]:
        if self.blocks is None:
            yield
            return
        self.blocks.attach(self.device)
        try:
            yield
        finally:
            self.blocks.detach()
            self._release()

    def before_first_block(self) -> None:
        if self.blocks is not None:
            self.blocks.ready(0)
