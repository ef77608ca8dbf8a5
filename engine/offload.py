"""Streaming a model's repeated blocks into a few GPU slots (the memory plan's streamed blocks).

Each block's weights are packed once into one flat CPU buffer, so a block moves in a single large copy.
While block i runs on the compute stream, the next blocks are copied into their slots on a side stream;
a slot is overwritten only after the block that last used it has finished (CUDA events order the two
streams). Blocks of the same layout share `slots` buffers, so the GPU holds `slots` blocks of each kind
plus the small rest (embedders, norms, projections), and the first `resident` blocks, which are copied
to the GPU once and stay there.

The packed buffers are pinned RAM (copies at full PCIe speed), or memory-mapped files (`mapped_file`): then
the weights are the page cache's, evictable and private to nobody, and a helper thread copies each block
from the mapping into a pinned staging buffer of its slot before the GPU copy. Where the loaded blocks
already are views of a mapped checkpoint (safetensors files loaded lazily, in any dtype), they stream
from it as they are; otherwise (FP8 blocks, weights built in memory) they are written once to one packed
file and mapped from there.

On the CPU (tests) the same bookkeeping runs with plain synchronous copies into CPU "slots".
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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


def cpu_copy(tensor: torch.Tensor, pin: bool, keep: list) -> torch.Tensor:
    """`tensor` in CPU memory; `keep` holds the pinned buffer so that it stays registered."""
    if not pin:
        return tensor.detach().to("cpu")
    source = tensor.detach().contiguous()
    buffer = host_buffer(source.numel() * source.element_size(), pin)
    buffer.copy_(source.reshape(-1).view(torch.uint8))
    keep.append(buffer)
    return buffer.view(source.dtype).view(source.shape)


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of regular files (from /proc/self/maps; none elsewhere)."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                # pinned buffers are shared anonymous memory, listed as "/dev/zero (deleted)"
                if path.startswith("/") and not path.startswith("/dev/") and not path.endswith("(deleted)"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        pass
    return ranges


def _file_backed(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    """Whether the tensor's storage lies in a mapped file (pages the OS may drop and read again)."""
    if tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    return any(low <= start and end <= high for low, high in ranges)


def _view(flat: torch.Tensor, slot: _Slot) -> torch.Tensor:
    return flat[slot.offset: slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)


class _PackedBlock:
    """A block's tensors in one flat CPU buffer (pinned, plain, or a view of a mapped file); the block then
    points into it."""

    def __init__(self, block: nn.Module, dtype: torch.dtype | None = None):
        self.layout: list[_Slot] = []
        offset = 0
        # detached: a parameter's `.data` is re-pointed as the block moves, its original storage must stay
        self.tensors = [(owner, name, t.detach(), is_param) for owner, name, t, is_param in _direct_tensors(block)]
        for owner, name, tensor, is_param in self.tensors:
            kept = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            nbytes = tensor.numel() * kept.itemsize
            self.layout.append(_Slot(owner, name, is_param, offset, nbytes, tensor.shape, kept))
            offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        self.cpu: torch.Tensor | None = None  # the flat buffer, unless the block streams from its checkpoint

    def fill(self, flat: torch.Tensor) -> None:
        """Copy the block's weights into `flat`, in the packed layout (cast to its dtype on the way)."""
        if self.cpu is not None:
            flat.copy_(self.cpu)
            return
        for slot, (_, _, tensor, _) in zip(self.layout, self.tensors, strict=True):
            _view(flat, slot).copy_(tensor.detach())

    def pack_into(self, flat: torch.Tensor) -> None:
        """Copy the block's tensors into `flat` and point the block at it (the originals are let go)."""
        self.fill(flat)
        self.adopt(flat)

    def home(self) -> None:
        """Point the block back at where its weights live off the device: its flat buffer or its checkpoint."""
        if self.cpu is not None:
            self.point_at(self.cpu)
        else:
            for slot, (_, _, tensor, _) in zip(self.layout, self.tensors, strict=True):
                _set_tensor(slot.owner, slot.name, slot.is_param, tensor)

    def adopt(self, flat: torch.Tensor) -> None:
        self.cpu, self.tensors = flat, []
        self.point_at(flat)  # frees the original storage

    @property
    def signature(self) -> tuple:
        return tuple((s.shape, s.dtype, s.offset) for s in self.layout)

    def point_at(self, flat: torch.Tensor) -> None:
        for slot in self.layout:
            _set_tensor(slot.owner, slot.name, slot.is_param, _view(flat, slot))


class VisitingWeights:
    """A module's weights in one flat host buffer (pinned where `pin`), brought to a device for a phase of the
    job by one copy and sent back by pointing the module at the buffer again: inference never changes them,
    so nothing is copied back (`module.to("cpu")` copied 0.5 GB of VAE into fresh pageable memory after every
    section's decode in the low plans). One per module, however many placements it serves."""

    def __init__(self, module: nn.Module, pin: bool):
        self.packed = _PackedBlock(module)
        self.packed.pack_into(host_buffer(self.packed.nbytes, pin))

    @classmethod
    def of(cls, module: nn.Module, pin: bool) -> VisitingWeights:
        existing = getattr(module, "_framepack_visiting", None)
        if existing is None:
            existing = module._framepack_visiting = cls(module, pin)
        return existing

    def visit(self, device: torch.device) -> None:
        """Point the module at its copy on `device`, queued on the current stream ahead of the phase's own
        work (a copy on the CPU too: the tests' CPU runs take the GPU's path)."""
        self.packed.point_at(self.packed.cpu.to(device, non_blocking=True, copy=True))

    def leave(self) -> None:
        self.packed.home()


def _write_packed(path: Path, packed: Sequence[_PackedBlock]) -> None:
    """The blocks' flat buffers one after another, after a JSON header of their sizes, written once."""
    header = json.dumps({"blocks": [p.nbytes for p in packed]}).encode()
    start = -(-(8 + len(header)) // ALIGN) * ALIGN
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as out:
        out.write(len(header).to_bytes(8, "little") + header + b"\0" * (start - 8 - len(header)))
        for block in packed:  # one block's copy in private memory at a time
            flat = torch.empty(block.nbytes, dtype=torch.uint8)
            block.fill(flat)
            out.write(flat.numpy().tobytes())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _map_packed(path: Path, packed: Sequence[_PackedBlock]) -> mmap.mmap | None:
    """Map a packed file read-only and point each block into it; None when the file does not match."""
    with path.open("rb") as source:
        length = int.from_bytes(source.read(8), "little")
        sizes = json.loads(source.read(length))["blocks"]
        if sizes != [p.nbytes for p in packed]:
            return None
        mapping = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: torch wants writable
    offset = -(-(8 + length) // ALIGN) * ALIGN
    data = torch.frombuffer(mapping, dtype=torch.uint8)
    for block in packed:
        block.adopt(data[offset: offset + block.nbytes])
        offset += block.nbytes
    return mapping


class BlockStreamer:
    """Keeps `model` on the CPU and, while attached to a device, runs `blocks` from rotating device slots.

    `blocks` are the model's repeated blocks in the order they run (several lists are joined in order);
    the rest of the model's tensors are on the device while attached. The first `resident` blocks are
    copied to the device at the first attach and stay there until `close`. `ahead` blocks are prefetched;
    the order is taken as cyclic, so the last streamed block prefetches the first for the next call.
    With `mapped_file`, the streamed blocks stream from mapped memory: the checkpoint's own mapping where
    they are views of it, else that file (written on first use, mapped after). With `dtype`, floating
    weights are cast to it as they are packed or staged, one block at a time (a checkpoint stored in
    another dtype is never cast whole in RAM).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], slots: int = 2, ahead: int = 1,
                 pin: bool | None = None, resident: int = 0, mapped_file: Path | None = None,
                 resident_device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if slots < 2:
            raise ValueError("Streaming needs at least two slots per block kind: one runs while one loads.")
        pin = torch.cuda.is_available() if pin is None else pin
        self.model = model
        self.blocks = list(blocks)
        self.slots = slots
        self.ahead = max(1, min(ahead, slots - 1))
        self.resident_count = max(0, min(resident, len(self.blocks)))
        block_ids = {id(m) for b in self.blocks for m in b.modules()}
        self._pinned: list[torch.Tensor] = []
        self.resident = [
            (owner, name, is_param, cpu_copy(tensor, pin and mapped_file is None, self._pinned))
            for owner, name, tensor, is_param in _direct_tensors(model)
            if id(owner) not in block_ids
        ]
        for owner, name, is_param, cpu in self.resident:
            _set_tensor(owner, name, is_param, cpu)
        self.packed = [_PackedBlock(block, dtype) for block in self.blocks]
        self.streamed = list(range(self.resident_count, len(self.blocks)))
        self.mapped = False  # the streamed blocks stream from mapped memory (the checkpoint's or a packed file)
        self._mapping = None
        if mapped_file is not None and self.streamed:
            self._map(Path(mapped_file))
        self._resident_on: torch.device | None = None  # where the resident blocks are, once copied
        if resident_device is not None:  # packed straight into the device: no RAM copy, not even for a moment
            self._resident_on = torch.device(resident_device)
        for index, block in enumerate(self.packed):
            if self.mapped and index >= self.resident_count:
                continue
            if index < self.resident_count and self._resident_on is not None:
                flat = torch.empty(block.nbytes, dtype=torch.uint8, device=self._resident_on)
            else:
                flat = host_buffer(block.nbytes, pin and index in self.streamed)
            block.pack_into(flat)
        kinds: dict[tuple, int] = {}
        self.kind_of = [kinds.setdefault(p.signature, len(kinds)) for p in self.packed]
        seen: dict[int, int] = {}
        self.slot_of: list[tuple[int, int] | None] = []
        for index, kind in enumerate(self.kind_of):
            if index < self.resident_count:
                self.slot_of.append(None)
                continue
            self.slot_of.append((kind, seen.get(kind, 0) % slots))
            seen[kind] = seen.get(kind, 0) + 1
        self.kind_bytes = {k: self.packed[i].nbytes for i, k in enumerate(self.kind_of) if i in self.streamed}
        self.device: torch.device | None = None
        self._copy_delay = 0.0  # benchmarks: GPU clock cycles added per byte copied (a slower link)
        self.copies = 0  # block copies issued since attach, for tests and benchmarks
        self._stager: ThreadPoolExecutor | None = None
        self._staged: dict[int, Future] = {}
        self._hooks: list = []
        for index, block in enumerate(self.blocks):
            self._hooks.append(block.register_forward_pre_hook(lambda _m, _a, i=index: self._before(i)))
            self._hooks.append(block.register_forward_hook(lambda _m, _a, _o, i=index: self._after(i)))

    def _map(self, path: Path) -> None:
        """Stream from the checkpoint's mapping where the blocks are views of it; else point the streamed
        blocks into `path`, writing it first when it is missing or stale."""
        streamed = [self.packed[i] for i in self.streamed]
        ranges = _file_mappings()
        if all(_file_backed(t, ranges) for block in streamed for _, _, t, _ in block.tensors):
            log.info("streaming %d blocks from their checkpoint's memory mapping", len(streamed))
            self.mapped = True
            return
        if path.is_file():
            self._mapping = _map_packed(path, streamed)
        if self._mapping is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("writing the streamed blocks to %s (once)", path)
            _write_packed(path, streamed)
            self._mapping = _map_packed(path, streamed)
        self.mapped = True

    def slow_down(self, cycles_per_byte: float) -> None:
        """Benchmarks: hold the copy stream this many GPU cycles per byte after each block's copy, so that
        copies take as long as over a slower link (a consumer PCIe 4.0 x16 moves about 25 GB/s)."""
        self._copy_delay = cycles_per_byte

    # -- placement ---------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self.device is not None

    @property
    def device_bytes(self) -> int:
        """Bytes held on the device while attached: the slots, the resident blocks and the rest."""
        slots = sum(self.kind_bytes.values()) * self.slots
        blocks = sum(p.nbytes for p in self.packed[:self.resident_count])
        return slots + blocks + sum(t.numel() * t.element_size() for *_, t in self.resident)

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
        if self._resident_on != device:
            for packed in self.packed[:self.resident_count]:
                packed.cpu = packed.cpu.to(device)  # no copy stays in RAM: resident blocks live on the device
                packed.point_at(packed.cpu)
            self._resident_on = device
        self._buffers = {
            (kind, s): torch.empty(nbytes, dtype=torch.uint8, device=device)
            for kind, nbytes in self.kind_bytes.items() for s in range(self.slots)
        }
        if self.mapped and self._cuda:  # pinned staging, one per GPU slot, filled by a helper thread
            self._staging = {slot: host_buffer(buffer.numel(), True) for slot, buffer in self._buffers.items()}
            self._staging_free: dict = dict.fromkeys(self._buffers)
            self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="framepack-stager")
        self._occupant: dict[tuple[int, int], int | None] = dict.fromkeys(self._buffers)
        self._ready: dict[tuple[int, int], torch.cuda.Event | None] = dict.fromkeys(self._buffers)
        self._free: dict[tuple[int, int], torch.cuda.Event | None] = dict.fromkeys(self._buffers)
        for index in self.streamed:
            self.packed[index].point_at(self._buffers[self.slot_of[index]])
        self.copies = 0
        if self.streamed:
            self._load(self.streamed[0])

    def detach(self) -> None:
        """The streamed blocks and the rest back to the CPU buffers; the device slots are released. The
        resident blocks stay on the device."""
        if self.device is None:
            return
        if self._stager is not None:
            for future in self._staged.values():
                future.result()
            self._stager.shutdown(wait=True)
            self._stager, self._staged = None, {}
        if self._cuda:
            self._copy_stream.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
        for index in self.streamed:
            self.packed[index].home()
        for owner, name, is_param, cpu in self.resident:
            _set_tensor(owner, name, is_param, cpu)
        self._buffers = {}
        self.device = None

    def close(self) -> None:
        """Detach and bring the resident blocks back to RAM; the model is then a plain CPU model again."""
        self.detach()
        for packed in self.packed[:self.resident_count]:
            packed.cpu = packed.cpu.to("cpu")
            packed.point_at(packed.cpu)
        self._resident_on = None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- streaming ---------------------------------------------------------------------------------

    def _copy_to_slot(self, index: int, slot: tuple[int, int], source: torch.Tensor) -> None:
        """Issue the GPU copy of a pinned `source` into `slot` once the slot's last user has finished."""
        with torch.cuda.stream(self._copy_stream):
            if self._free[slot] is not None:
                self._copy_stream.wait_event(self._free[slot])
            self._buffers[slot].copy_(source, non_blocking=True)
            if self._copy_delay:
                torch.cuda._sleep(int(source.numel() * self._copy_delay))
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        self._ready[slot] = ready

    def _stage(self, index: int, slot: tuple[int, int]) -> None:
        """On the helper thread: the mapped block into its pinned staging buffer (page faults happen here,
        off the compute thread), then its GPU copy."""
        if self._staging_free[slot] is not None:
            self._staging_free[slot].synchronize()  # the staging buffer's previous GPU copy is done
        self.packed[index].fill(self._staging[slot])
        self._copy_to_slot(index, slot, self._staging[slot])
        done = torch.cuda.Event()
        done.record(self._copy_stream)
        self._staging_free[slot] = done

    def _load(self, index: int) -> None:
        slot = self.slot_of[index]
        if slot is None or self._occupant[slot] == index:
            return
        if self._cuda and self._stager is not None:
            self._staged[index] = self._stager.submit(self._stage, index, slot)
        elif self._cuda:
            self._copy_to_slot(index, slot, self.packed[index].cpu)
        else:
            self.packed[index].fill(self._buffers[slot])
        self._occupant[slot] = index
        self.copies += 1

    def ready(self, index: int) -> None:
        """Make block `index`'s weights usable outside its own forward (TeaCache reads block 0's norm)."""
        slot = self.slot_of[index]
        if slot is None:
            return  # resident
        self._load(index)
        staged = self._staged.pop(index, None)
        if staged is not None:
            staged.result()
        if self._cuda and self._ready[slot] is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready[slot])

    def _before(self, index: int) -> None:
        if self.device is None:
            raise RuntimeError("A streamed block ran while its weights were on the CPU; attach() the streamer first.")
        self.ready(index)
        if not self.streamed:
            return
        # Prefetch the next streamed blocks in run order, stopping at the first slot that is busy (running
        # or already prefetched); a resident block prefetches the first streamed one after it.
        busy = {self.slot_of[index]}
        following = index
        for _ in range(self.ahead):
            following = self._next_streamed(following)
            if self.slot_of[following] in busy:
                break
            busy.add(self.slot_of[following])
            self._load(following)

    def _next_streamed(self, index: int) -> int:
        later = [i for i in self.streamed if i > index]
        return later[0] if later else self.streamed[0]

    def _after(self, index: int) -> None:
        slot = self.slot_of[index]
        if self._cuda and slot is not None:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._free[slot] = done
