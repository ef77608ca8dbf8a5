"""The 60 blocks replayed from one CUDA graph (high-VRAM mode): one launch a call instead of thousands.

A benchmark experiment, not an engine mode: on an H200 it measured no faster (0.8029 against 0.8021 s a step
with FlashAttention-3, 0.8698 against 0.8701 with PyTorch's attention), because the GPU, not the host's
launches, sets the pace of these 18,000-token calls. speed_modes.py keeps the stage to show it.

The first call with new shapes runs the blocks as usual (which also compiles them and builds the kernels'
plans); the second captures them into a graph; every later call copies its inputs into the graph's buffers and
replays it. The math is the plain loop's, kernel for kernel. One graph is kept (a new prompt length or
resolution replaces it), and its memory pool holds the blocks' activations, as a plain call would at its peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.packed_forward import BlockInputs, run_all_blocks


def _tensors(x: BlockInputs) -> tuple[torch.Tensor, ...]:
    return (x.hidden, x.encoder, x.temb, *x.rope)


def _key(x: BlockInputs) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors(x))


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class GraphedBlocks:
    """A BlockLoop for packed_forward; falls back to the plain loop off CUDA and for masked (batched) calls."""

    def __init__(self):
        self._seen: tuple | None = None  # shapes of the last eager call, captured on the next call like it
        self._captured: tuple[tuple, _Captured] | None = None
        self.replays = 0

    def __call__(self, transformer: nn.Module, x: BlockInputs) -> torch.Tensor:
        if x.hidden.device.type != "cuda" or x.attention_mask is not None:
            return run_all_blocks(transformer, x)
        key = _key(x)
        if self._captured is None or self._captured[0] != key:
            if self._seen != key:
                self._seen = key  # first call with these shapes: warm up
                return run_all_blocks(transformer, x)
            self._captured = None  # free the old graph's pool before capturing the new one
            self._captured = (key, self._capture(transformer, x))
        captured = self._captured[1]
        for static, live in zip(captured.inputs, _tensors(x), strict=True):
            static.copy_(live)
        captured.graph.replay()
        self.replays += 1
        return captured.output.clone()  # the next replay overwrites the graph's own buffer

    @staticmethod
    def _capture(transformer: nn.Module, x: BlockInputs) -> _Captured:
        inputs = tuple(t.clone() for t in _tensors(x))
        hidden, encoder, temb, cos, sin = inputs
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        # thread_local: the render's output thread may use CUDA while this thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = run_all_blocks(transformer, BlockInputs(hidden, encoder, temb, None, (cos, sin)))
        return _Captured(graph, inputs, output)

    def release(self) -> None:
        self._captured, self._seen = None, None
