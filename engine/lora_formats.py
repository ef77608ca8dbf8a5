"""Reading HunyuanVideo LoRA files in the formats in use, down to one low-rank pair per source module.

Three namings reach the same FramePack transformer (diffusers' HunyuanVideoFramepackTransformer3DModel):

- diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` and `.lora_B.weight`,
  sometimes with `.alpha`; the module path is the transformer's own.
- musubi-tuner and kohya: `lora_unet_<module path with dots as underscores>.lora_down.weight`, `.lora_up.weight`
  and `.alpha`. musubi's FramePack LoRAs flatten the diffusers path (`lora_unet_transformer_blocks_0_attn_to_q`),
  its HunyuanVideo ones the original path (`lora_unet_double_blocks_0_img_attn_qkv`). Underscores are ambiguous
  (`to_q`, `norm1_context`), so flattened names are looked up among the model's own paths, as musubi names them.
- the original HunyuanVideo paths with PEFT's suffixes (diffusion-pipe and others):
  `diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight`; engine/lora_names.py maps them.

The result keeps each module's name as the file spells it; engine/lora_names.py turns names into the
transformer's modules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from storage.inputs import InputError

FLATTENED_PREFIX = "lora_unet_"
# What trainers put before the module path; stripped in this order (the first that matches).
PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.")
DOWN_SUFFIXES = (".lora_A.weight", ".lora_A.default.weight", ".lora_down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora_B.default.weight", ".lora_up.weight")
ALPHA_SUFFIX = ".alpha"
# Keys of adapters that are not a plain LoRA: named so the refusal says what the file is.
NOT_PLAIN_LORA = {".dora_scale": "DoRA", ".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".diff": "a full weight difference",
                  ".diff_b": "a bias difference", ".lora_A.bias": "LoRA biases", ".lora_B.bias": "LoRA biases",
                  ".lora_mid.weight": "LoCon's mid weight"}


class LoraError(InputError):
    """A LoRA that cannot be used (file, keys, shapes, choice); the message is for the person or admin."""


@dataclass
class LoraPair:
    """One module's low-rank update: delta W = up @ down * (alpha / rank), before the strength."""

    down: torch.Tensor  # (rank, in_features)
    up: torch.Tensor  # (out_features, rank)
    alpha: float | None  # None: no alpha stored, the scale is 1 (diffusers and PEFT save it so)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LoraFile:
    path: Path
    sha256: str
    flattened: bool  # kohya / musubi-tuner names: dots written as underscores
    pairs: dict[str, LoraPair]  # module name as the file spells it (prefix stripped) -> its update


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as source:
        while chunk := source.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def read_lora_file(path: Path) -> LoraFile:
    """The file's LoRA pairs, or a LoraError that says why it is not a LoRA this engine takes."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path.name}: no such file.")
    tensors = _read_safetensors(path)
    flattened = any(key.startswith(FLATTENED_PREFIX) for key in tensors)
    pairs = _pairs(tensors, path.name)
    return LoraFile(path, file_sha256(path), flattened, pairs)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as opened:
            return {key: opened.get_tensor(key) for key in opened.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraError(f"{path.name} is not a safetensors file ({error}); LoRAs are taken as .safetensors "
                            "only (a .ckpt or .pt could run code when read).") from None


def _strip_prefix(key: str) -> str:
    if key.startswith(FLATTENED_PREFIX):
        return key[len(FLATTENED_PREFIX):]
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_key(key: str) -> tuple[str, str] | None:
    """(module name, 'down' | 'up' | 'alpha') or None for a key that is no part of a plain LoRA."""
    for suffixes, part in ((DOWN_SUFFIXES, "down"), (UP_SUFFIXES, "up"), ((ALPHA_SUFFIX,), "alpha")):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[: -len(suffix)], part
    return None


def _pairs(tensors: dict[str, torch.Tensor], file_name: str) -> dict[str, LoraPair]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    others = []
    for key, tensor in tensors.items():
        kind = next((what for suffix, what in NOT_PLAIN_LORA.items() if key.endswith(suffix)), None)
        if kind is not None:
            raise LoraError(f"{file_name} holds {kind} ({key}); only plain LoRAs (down and up matrices) are "
                                "supported.")
        split = _split_key(_strip_prefix(key))
        if split is None:
            others.append(key)
            continue
        parts.setdefault(split[0], {})[split[1]] = tensor
    if not parts:
        shown = ", ".join(others[:3]) or "none"
        raise LoraError(f"{file_name} has no LoRA keys (lora_A/lora_B or lora_down/lora_up); its keys start "
                            f"with: {shown}.")
    if others:
        raise LoraError(f"{file_name} has {len(others)} keys that are no part of a LoRA, e.g. {others[0]}.")
    return {name: _pair(name, found, file_name) for name, found in parts.items()}


def _pair(name: str, found: dict[str, torch.Tensor], file_name: str) -> LoraPair:
    missing = [part for part in ("down", "up") if part not in found]
    if missing:
        raise LoraError(f"{file_name}: {name} has no {' or '.join(missing)} matrix.")
    down, up = found["down"], found["up"]
    if down.dim() == 4 and down.shape[2:] == (1, 1):  # a 1x1 convolution's LoRA saved for a linear
        down, up = down.flatten(1), up.flatten(1)
    if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
        raise LoraError(f"{file_name}: {name} has down {tuple(down.shape)} and up {tuple(up.shape)}, which are "
                            "not the two matrices of one linear's LoRA.")
    alpha = found.get("alpha")
    return LoraPair(down, up, None if alpha is None else float(alpha.float().reshape(-1)[0]))
