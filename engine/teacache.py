"""TeaCache (SPEC.md section 8): skip all 60 blocks on calls whose input barely moved since the last one.

Each call measures how much the first dual block's modulated input changed (relative L1), maps it
through the official polynomial and adds it up; while the sum stays under the threshold the blocks
are skipped and the image stream gets the residual that the last full pass added. The first and the
last call of a section always run in full. Like the official code it counts calls, not steps, so with
true CFG the counter moves twice per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from engine.packed_forward import BlockInputs, BlockLoopTransformer, run_all_blocks

# The official rescale, highest power first.
RESCALE = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


def rescale(change: float) -> float:
    value = 0.0
    for coefficient in RESCALE:
        value = value * change + coefficient
    return value


def _moved(tensor: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


class TeaCache:
    """One section's cache; `reset(calls)` before each section. A threshold <= 0 never skips."""

    def __init__(self, threshold: float = 0.15, before_first_block: Callable[[], None] | None = None):
        self.threshold = threshold
        self.before_first_block = before_first_block  # low-VRAM: bring block 0's weights in for norm1
        self.reset(25)
        self.skipped_total = 0
        self.calls_total = 0

    def reset(self, calls: int) -> None:
        self.calls = calls
        self.count = 0
        self.accumulated = 0.0
        self.previous_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.skipped = 0

    def state(self) -> dict:
        """What a paused section needs to continue exactly as if it had not stopped."""
        return {"count": self.count, "accumulated": self.accumulated, "skipped": self.skipped,
                "previous_input": _moved(self.previous_input, "cpu"), "residual": _moved(self.residual, "cpu")}

    def load_state(self, state: dict, device: torch.device) -> None:
        self.count, self.accumulated, self.skipped = state["count"], state["accumulated"], state["skipped"]
        self.previous_input = _moved(state["previous_input"], device)
        self.residual = _moved(state["residual"], device)

    def _should_run(self, modulated: torch.Tensor) -> bool:
        if self.count in (0, self.calls - 1) or self.previous_input is None or self.residual is None:
            self.accumulated = 0.0
            return True
        previous = self.previous_input
        change = ((modulated - previous).abs().mean() / previous.abs().mean()).item()
        self.accumulated += rescale(change)
        if self.threshold <= 0 or self.accumulated >= self.threshold:
            self.accumulated = 0.0
            return True
        return False

    def __call__(self, transformer: nn.Module, x: BlockInputs) -> torch.Tensor:
        if self.before_first_block is not None:
            self.before_first_block()
        modulated = transformer.transformer_blocks[0].norm1(x.hidden, emb=x.temb)[0]
        run = self._should_run(modulated)
        self.previous_input = modulated
        self.count = (self.count + 1) % self.calls
        self.calls_total += 1
        if not run:
            self.skipped += 1
            self.skipped_total += 1
            return x.hidden + self.residual
        before = x.hidden
        hidden = run_all_blocks(transformer, x)
        self.residual = hidden - before
        return hidden


class TeaCacheTransformer(BlockLoopTransformer):
    """Stands in for the transformer in the denoiser: same call, blocks skipped by `cache`."""

    def __init__(self, transformer: nn.Module, cache: TeaCache):
        super().__init__(transformer, cache)
        self.cache = cache
