"""Low-VRAM mode: a model whose repeated blocks stream from pinned CPU memory into a few GPU slots.

Each block's weights are packed once into one flat pinned buffer, so a block moves in a single large
copy at full PCIe speed. While block i runs on the compute stream, the next blocks are copied into
their slots on a side stream; a slot is overwritten only after the block that last used it has
finished (CUDA events order the two streams). Blocks of the same layout share `slots` buffers, so the
GPU holds `slots` blocks of each kind plus the small resident rest (embedders, norms, projections).

On the CPU (tests) the same bookkeeping runs with plain synchronous copies into CPU "slots".
"""

from __future__ import annotations

import logging
import mmap
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

ALIGN = 64  # bytes; every tensor starts on a boundary that any dtype view accepts


@dataclass
class _Slot:
    """One tensor of a module: where it hangs, its layout inside the block's flat buffer."""

    owner: nn.Module
    name: str
    is_param: bool
    offset: int
    nbytes: int
    shape: torch.Size
    dtype: torch.dtype


def _direct_tensors(module: nn.Module):
    """(owner, name, tensor, is_param) for every parameter and buffer under `module`."""
    for owner in module.modules():
        for name, tensor in owner._parameters.items():
            if tensor is not None:
                yield owner, name, tensor, True
        for name, tensor in owner._buffers.items():
            if tensor is not None:
                yield owner, name, tensor, False


def _set_tensor(owner: nn.Module, name: str, is_param: bool, value: torch.Tensor) -> None:
    if is_param:
        owner._parameters[name].data = value
    else:
        owner._buffers[name] = value


def host_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    """A CPU byte buffer; page-locked when `pin`, so that copies to the GPU run asynchronously at full speed.

    Pinned memory comes from an anonymous mapping registered with cudaHostRegister, not from torch's
    pinned allocator: that one rounds each request up to a power of two (60 blocks of 283 and 680 MB
    would hold 45 GB of RAM instead of 26). The mapping is excluded from fork(): Linux copies pinned
    pages into every child at once, so each ffmpeg the engine starts would copy the whole model.
    It stays registered while this buffer object lives (views alone do not keep it registered).
    """
    if not pin or not nbytes:
        return torch.empty(nbytes, dtype=torch.uint8)
    mapping = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_DONTFORK"):
        mapping.madvise(mmap.MADV_DONTFORK)
    buffer = torch.frombuffer(mapping, dtype=torch.uint8)
    cudart = torch.cuda.cudart()
    try:
        torch.cuda.check_error(cudart.cudaHostRegister(buffer.data_ptr(), nbytes, 0))
    except RuntimeError as error:  # e.g. a locked-memory limit: torch's own pinned memory still works
        log.warning("cudaHostRegister failed (%s); using torch's pinned allocator", error)
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
    return buffer


def _cpu_copy(tensor: torch.Tensor, pin: bool, keep: list) -> torch.Tensor:
    """`tensor` in CPU memory; `keep` holds the pinned buffer so that it stays registered."""
    if not pin:
        return tensor.detach().to("cpu")
    source = tensor.detach().contiguous()
    buffer = host_buffer(source.numel() * source.element_size(), pin)
    buffer.copy_(source.reshape(-1).view(torch.uint8))
    keep.append(buffer)
    return buffer.view(source.dtype).view(source.shape)


def _view(flat: torch.Tensor, slot: _Slot) -> torch.Tensor:
    return flat[slot.offset: slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)


class _PackedBlock:
    """A block's tensors copied into one flat (pinned) CPU buffer; the block then points into it."""

    def __init__(self, block: nn.Module, pin: bool):
        self.layout: list[_Slot] = []
        offset = 0
        tensors = list(_direct_tensors(block))
        for owner, name, tensor, is_param in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            self.layout.append(_Slot(owner, name, is_param, offset, nbytes, tensor.shape, tensor.dtype))
            offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        self.cpu = host_buffer(offset, pin)
        for slot, (_, _, tensor, _) in zip(self.layout, tensors, strict=True):
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            self.cpu[slot.offset: slot.offset + slot.nbytes].copy_(raw)
        self.point_at(self.cpu)  # frees the original storage

    @property
    def signature(self) -> tuple:
        return tuple((s.shape, s.dtype, s.offset) for s in self.layout)

    def point_at(self, flat: torch.Tensor) -> None:
        for slot in self.layout:
            _set_tensor(slot.owner, slot.name, slot.is_param, _view(flat, slot))


class BlockStreamer:
    """Keeps `model` on the CPU and, while attached to a device, runs `blocks` from rotating device slots.

    `blocks` are the model's repeated blocks in the order they run (several lists are joined in order);
    the rest of the model's tensors are resident on the device while attached. `ahead` blocks are
    prefetched; the order is taken as cyclic, so the last block prefetches the first for the next call.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], slots: int = 2, ahead: int = 1,
                 pin: bool | None = None):
        if slots < 2:
            raise ValueError("Streaming needs at least two slots per block kind: one runs while one loads.")
        pin = torch.cuda.is_available() if pin is None else pin
        self.model = model
        self.blocks = list(blocks)
        self.slots = slots
        self.ahead = max(1, min(ahead, slots - 1))
        block_ids = {id(m) for b in self.blocks for m in b.modules()}
        self._pinned: list[torch.Tensor] = []
        self.resident = [
            (owner, name, is_param, _cpu_copy(tensor, pin, self._pinned))
            for owner, name, tensor, is_param in _direct_tensors(model)
            if id(owner) not in block_ids
        ]
        for owner, name, is_param, cpu in self.resident:
            _set_tensor(owner, name, is_param, cpu)
        self.packed = [_PackedBlock(block, pin) for block in self.blocks]
        kinds: dict[tuple, int] = {}
        self.kind_of = [kinds.setdefault(p.signature, len(kinds)) for p in self.packed]
        seen: dict[int, int] = {}
        self.slot_of: list[tuple[int, int]] = []
        for kind in self.kind_of:
            self.slot_of.append((kind, seen.get(kind, 0) % slots))
            seen[kind] = seen.get(kind, 0) + 1
        self.kind_bytes = {k: next(p.nbytes for p, kk in zip(self.packed, self.kind_of, strict=True) if kk == k)
                           for k in kinds.values()}
        self.device: torch.device | None = None
        self.copies = 0  # block copies issued since attach, for tests and benchmarks
        self._hooks: list = []
        for index, block in enumerate(self.blocks):
            self._hooks.append(block.register_forward_pre_hook(lambda _m, _a, i=index: self._before(i)))
            self._hooks.append(block.register_forward_hook(lambda _m, _a, _o, i=index: self._after(i)))

    # -- placement ---------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self.device is not None

    @property
    def device_bytes(self) -> int:
        """Bytes held on the device while attached: the slots plus the resident tensors."""
        slots = sum(self.kind_bytes.values()) * self.slots
        return slots + sum(t.numel() * t.element_size() for *_, t in self.resident)

    def attach(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.device == device:
            return
        self.detach()
        self.device = device
        self._cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self._cuda else None
        for owner, name, is_param, cpu in self.resident:
            _set_tensor(owner, name, is_param, cpu.to(device))
        self._buffers = {
            (kind, s): torch.empty(nbytes, dtype=torch.uint8, device=device)
            for kind, nbytes in self.kind_bytes.items() for s in range(self.slots)
        }
        self._occupant: dict[tuple[int, int], int | None] = dict.fromkeys(self._buffers)
        self._ready: dict[tuple[int, int], torch.cuda.Event | None] = dict.fromkeys(self._buffers)
        self._free: dict[tuple[int, int], torch.cuda.Event | None] = dict.fromkeys(self._buffers)
        for packed, slot in zip(self.packed, self.slot_of, strict=True):
            packed.point_at(self._buffers[slot])
        self.copies = 0
        self._load(0)

    def detach(self) -> None:
        """Everything back to the CPU buffers; the device slots are released."""
        if self.device is None:
            return
        if self._cuda:
            self._copy_stream.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
        for packed in self.packed:
            packed.point_at(packed.cpu)
        for owner, name, is_param, cpu in self.resident:
            _set_tensor(owner, name, is_param, cpu)
        self._buffers = {}
        self.device = None

    def close(self) -> None:
        self.detach()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- streaming ---------------------------------------------------------------------------------

    def _load(self, index: int) -> None:
        slot = self.slot_of[index]
        if self._occupant[slot] == index:
            return
        source = self.packed[index].cpu
        if self._cuda:
            with torch.cuda.stream(self._copy_stream):
                if self._free[slot] is not None:
                    self._copy_stream.wait_event(self._free[slot])  # its last user has finished
                self._buffers[slot].copy_(source, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._copy_stream)
            self._ready[slot] = ready
        else:
            self._buffers[slot].copy_(source)
        self._occupant[slot] = index
        self.copies += 1

    def ready(self, index: int) -> None:
        """Make block `index`'s weights usable outside its own forward (TeaCache reads block 0's norm)."""
        self._load(index)
        slot = self.slot_of[index]
        if self._cuda and self._ready[slot] is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready[slot])

    def _before(self, index: int) -> None:
        if self.device is None:
            raise RuntimeError("A streamed block ran while its weights were on the CPU; attach() the streamer first.")
        self.ready(index)
        slot = self.slot_of[index]
        # Prefetch in run order, stopping at the first slot that is busy (running or already prefetched).
        busy = {slot}
        for step in range(1, self.ahead + 1):
            following = (index + step) % len(self.blocks)
            if self.slot_of[following] in busy:
                break
            busy.add(self.slot_of[following])
            self._load(following)

    def _after(self, index: int) -> None:
        if self._cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._free[self.slot_of[index]] = done
