"""Matching a LoRA file to the loaded transformer, and putting LoRAs on it and taking them off between jobs.

Unfused (the default) works in every memory plan: the targeted linears are wrapped (engine/lora_linear.py)
and the model's own weights are never touched, so taking the LoRAs off is exact by construction. The AdaLN
modulation linears that engine/modulation.py keeps in RAM are wrapped where they are kept; the section's
rows are then worked out with the update.

Fused merges W + strength x up @ down x alpha / rank into the weights (in fp32, rounded once to the weights'
dtype): no extra products per step. It keeps a CPU copy of each original weight and copies it back to
unfuse, so the weights after unfusing are bit for bit those before. It needs every targeted weight in a
plain nn.Linear that stays put: not streamed blocks (their weights are copied in from RAM every step), not
the modulation linears kept in RAM, not FP8 (merging into e4m3 would round the update away).

PEFT (and diffusers' load_lora_adapter, which goes through it) is not used: it wraps only nn.Linear (not
the FP8 linears), adds its adapter weights as parameters of the blocks (which the block streamer packs when
it is built and does not know about afterwards), cannot reach the modulation linears kept outside the
blocks, and keeps each adapter's scale as a Python float, which torch.compile bakes into the compiled
blocks (a recompile per strength).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.lora_formats import LoraError, LoraFile, LoraPair
from engine.lora_linear import LoraLinear, combined_pair, unwrapped
from engine.lora_names import Target, targets, unflatten
from engine.modulation import PrecomputedModulation

log = logging.getLogger(__name__)


@dataclass
class Match:
    """A LoRA file against a transformer: each target linear's (down, up, scale) and what did not match."""

    updates: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    matched: list[str] = field(default_factory=list)  # the file's module names that found their linears
    unmatched: list[str] = field(default_factory=list)  # why each of the others did not
    mismatched: list[str] = field(default_factory=list)  # shapes that do not fit their linear

    def problem(self, file_name: str) -> str | None:
        if self.mismatched:
            return (f"{file_name}: {len(self.mismatched)} LoRA modules do not fit the FramePack transformer's shapes "
                    f"(a LoRA for another model?), e.g. {self.mismatched[0]}.")
        if self.unmatched:
            return (f"{file_name}: {len(self.unmatched)} of {len(self.unmatched) + len(self.matched)} LoRA modules "
                    f"match no linear of the FramePack transformer, e.g. {self.unmatched[0]}.")
        return None


def linear_modules(transformer: nn.Module) -> dict[str, nn.Module]:
    """Every linear of the transformer by its plain path (as diffusers names it), as the base module: through
    a LoRA wrapper, and where the modulation is precomputed, the linear kept in RAM."""
    found, inside_wrappers = {}, set()
    for name, module in transformer.named_modules():
        if id(module) in inside_wrappers:
            continue
        if isinstance(module, LoraLinear):
            found[name] = module.base
            inside_wrappers.add(id(module.base))
        elif isinstance(module, PrecomputedModulation):
            found[name] = unwrapped(module.home[0])
        elif _is_linear(module):
            found[name] = module
    return found


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear and engine/fp8.py's linears (they keep in_features and out_features, and have no children)."""
    return hasattr(module, "in_features") and hasattr(module, "out_features") and not any(module.children())


def match_lora(lora: LoraFile, transformer: nn.Module) -> Match:
    linears = linear_modules(transformer)
    sizes = {path: linear.out_features for path, linear in linears.items()}
    names = dict(zip(lora.pairs, lora.pairs, strict=True))
    if lora.flattened:
        known = unflatten(lora.pairs, linears, transformer)
        names = {flat: known.get(flat) for flat in lora.pairs}
    match = Match()
    for source, name in names.items():
        found = targets(name, sizes) if name is not None else f"{source}: no such linear in the FramePack transformer"
        if isinstance(found, str):
            match.unmatched.append(found)
            continue
        problem = _add_updates(match, lora.pairs[source], found, linears, name)
        if problem:
            match.mismatched.append(problem)
        else:
            match.matched.append(source)
    return match


def _add_updates(match: Match, pair: LoraPair, found: list[Target], linears: dict[str, nn.Module],
                 name: str) -> str | None:
    """Each target's slice of the pair into `match.updates`; a string when the shapes do not fit."""
    total = sum(linears[t.path].out_features for t in found)
    if pair.up.shape[0] != total:
        return f"{name}: up has {pair.up.shape[0]} rows, the model's linear(s) {total} outputs"
    for target in found:
        linear = linears[target.path]
        if pair.down.shape[1] != linear.in_features:
            return f"{name}: down takes {pair.down.shape[1]} inputs, {target.path} {linear.in_features}"
        if target.path in match.updates:
            return f"{name}: {target.path} is targeted twice in one file"
        up = pair.up if target.rows is None else pair.up[target.rows[0]:target.rows[1]]
        if target.swap_halves:
            up = torch.cat(up.chunk(2, dim=0)[::-1])
        match.updates[target.path] = (pair.down, up, pair.scale)
    return None


# -- putting them on and taking them off ---------------------------------------------------------------


@dataclass
class AppliedLoras:
    """What is on the transformer now: the key of the request's LoRAs and how they went on."""

    key: tuple
    fused: bool
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # fused: each weight as it was, in RAM


def applied(transformer: nn.Module) -> AppliedLoras | None:
    return getattr(transformer, "_framepack_loras", None)


def put_on(transformer: nn.Module, weighted: list[tuple[Match, float]], key: tuple, device: torch.device,
           fused: bool = False) -> None:
    """The matched LoRAs at their strengths onto a transformer that has none."""
    per_linear: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for match, strength in weighted:
        for path, (down, up, scale) in match.updates.items():
            per_linear.setdefault(path, []).append((down, up, scale * strength))
    state = AppliedLoras(key, fused)
    if fused:
        _refuse_unfusable(transformer, per_linear)
        state.originals = _fuse(transformer, per_linear)
    else:
        _wrap(transformer, per_linear, device)
    transformer._framepack_loras = state


def take_off(transformer: nn.Module) -> None:
    """Back to the model's own weights: the wrappers removed, or the fused weights' originals copied back."""
    state = applied(transformer)
    if state is None:
        return
    if state.fused:
        linears = linear_modules(transformer)
        for path, original in state.originals.items():
            weight = linears[path].weight
            weight.data.copy_(original.to(weight.device))
    else:
        _unwrap(transformer)
    transformer._framepack_loras = None


def _lora_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype the linear computes in: its weight's (fp32 for the output projection), bf16 for FP8 weights."""
    weight = linear.weight
    return weight.dtype if weight.is_floating_point() and weight.element_size() >= 2 else torch.bfloat16


def _wrap(transformer: nn.Module, per_linear: dict, device: torch.device) -> None:
    linears = linear_modules(transformer)
    for path, updates in per_linear.items():
        down, up = combined_pair(updates, device, _lora_dtype(linears[path]))
        parent_path, _, leaf = path.rpartition(".")
        parent = transformer.get_submodule(parent_path) if parent_path else transformer
        current = getattr(parent, leaf)
        if isinstance(current, PrecomputedModulation):  # the linear is kept in RAM, outside the block
            current.home[0] = LoraLinear(current.home[0], down, up)
        else:
            setattr(parent, leaf, LoraLinear(current, down, up))


def _unwrap(transformer: nn.Module) -> None:
    for module in list(transformer.modules()):
        if isinstance(module, PrecomputedModulation) and isinstance(module.home[0], LoraLinear):
            module.home[0] = module.home[0].base
        for leaf, child in list(module.named_children()):
            if isinstance(child, LoraLinear):
                setattr(module, leaf, child.base)


def _refuse_unfusable(transformer: nn.Module, per_linear: dict) -> None:
    streamer = getattr(transformer, "_framepack_streamer", None)
    if streamer is not None and streamer.streamed:
        raise LoraError("Fused LoRAs need every block on the GPU; this memory plan streams blocks from RAM. "
                        "Use unfused LoRAs (the default).")
    linears = linear_modules(transformer)
    for path in per_linear:
        linear = linears[path]
        if type(linear) is not nn.Linear or _lora_dtype(linear) != linear.weight.dtype:
            raise LoraError(f"Fused LoRAs need plain bf16/fp32 linears; {path} is a {type(linear).__name__}. "
                            "Use unfused LoRAs (the default).")
        if isinstance(transformer.get_submodule(path), PrecomputedModulation):
            raise LoraError(f"Fused LoRAs cannot change {path}: its AdaLN modulation is worked out from a copy kept "
                            "in RAM. Use unfused LoRAs (the default).")


@torch.no_grad()
def _fuse(transformer: nn.Module, per_linear: dict) -> dict[str, torch.Tensor]:
    linears = linear_modules(transformer)
    originals = {}
    for path, updates in per_linear.items():
        weight = linears[path].weight
        originals[path] = weight.detach().to("cpu", copy=True)
        merged = weight.float()
        for down, up, scale in updates:
            merged += scale * (up.to(weight.device, torch.float32) @ down.to(weight.device, torch.float32))
        weight.copy_(merged.to(weight.dtype))  # in place: compiled blocks keep reading the same tensor
    return originals
