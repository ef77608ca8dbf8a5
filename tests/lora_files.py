"""LoRA files of every format, built from a transformer's own module names with random weights.

One set of weights, drawn per original HunyuanVideo module (a fused qkv is one down and one stacked up, as
trainers of the original model save it), written in each format: the diffusers/PEFT and musubi-tuner
FramePack files carry the same numbers split onto the diffusers linears. So every format must give the
same model, and `diffusers_updates` is what a LoRA does by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.lora_apply import linear_modules
from engine.lora_names import diffusers_paths, original_names

FORMATS = ("diffusers", "diffusers-no-alpha", "musubi-framepack", "original-peft", "musubi-hunyuan")


def original_weights(transformer, rank: int = 4, seed: int = 0, only=None, std: float = 0.3,
                     dtype: torch.dtype = torch.bfloat16) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(down, up) per original module name of `transformer`; `only`: a test on the name picks the modules."""
    linears = linear_modules(transformer)
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name in original_names(transformer):
        if only is not None and not only(name):
            continue
        paths, _ = diffusers_paths(name)
        rows = sum(linears[p].out_features for p in paths)
        down = torch.randn(rank, linears[paths[0]].in_features, generator=g) * std
        up = torch.randn(rows, rank, generator=g) * std
        weights[name] = (down.to(dtype), up.to(dtype))
    return weights


def diffusers_updates(transformer, weights: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The same weights on the diffusers linears: fused ups split by their parts' sizes, the final AdaLN's
    halves swapped (shift, scale -> scale, shift)."""
    linears = linear_modules(transformer)
    updates = {}
    for name, (down, up) in weights.items():
        paths, swap = diffusers_paths(name)
        start = 0
        for path in paths:
            part = up[start:start + linears[path].out_features]
            start += linears[path].out_features
            updates[path] = (down, torch.cat(part.chunk(2)[::-1]) if swap else part)
    return updates


def lora_state_dict(transformer, weights: dict, fmt: str, alpha: float | None) -> dict[str, torch.Tensor]:
    """The file's tensors in format `fmt` (one of FORMATS)."""
    tensors = {}
    pairs = weights if fmt in ("original-peft", "musubi-hunyuan") else diffusers_updates(transformer, weights)
    for name, (down, up) in pairs.items():
        if fmt.startswith("musubi"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
            key_alpha = f"{key}.alpha"
        else:
            key = ("diffusion_model." if fmt == "original-peft" else "transformer.") + name
            tensors |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
            key_alpha = f"{key}.alpha"
        if alpha is not None and fmt != "diffusers-no-alpha":
            tensors[key_alpha] = torch.tensor(alpha)
    return {key: value.clone().contiguous() for key, value in tensors.items()}  # shared downs: one copy each


def write_lora(path: Path, transformer, fmt: str = "diffusers", rank: int = 4, alpha: float | None = 2.0,
               seed: int = 0, only=None, std: float = 0.3) -> Path:
    weights = original_weights(transformer, rank, seed, only, std)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(transformer, weights, fmt, alpha), str(path))
    return path


def attention_and_ff(name: str) -> bool:
    """Original names of the blocks' attention and feed-forward linears (no modulation, nothing outside)."""
    in_blocks = name.startswith(("double_blocks.", "single_blocks."))
    return in_blocks and not name.endswith(("mod.linear", "modulation.linear"))
