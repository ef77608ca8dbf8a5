"""The LoRA files in LORA_DIR as the chats see them: their names, their sha256, and a person's picks checked
against them before a job is queued. No torch here (bot/ uses it): whether a file really fits the transformer
is engine/lora.py's check_lora, run by the worker at the job's start and by `/admin loras`.

Hashing a LoRA of a few hundred MB takes a second or so; the hashes are kept by (path, size, mtime), so a file
is read again only when it changes.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path

from storage.inputs import InputError
from storage.jobs import JobLora

MAX_LORAS = 3
MAX_STRENGTH = 4.0  # either sign; past about 2 most LoRAs only break the picture
SUFFIX = ".safetensors"

_hashes: dict[tuple[str, int, int], str] = {}
_hashes_lock = threading.Lock()


def lora_names(lora_dir: Path) -> list[str]:
    """The names people pick from: each NAME.safetensors in the folder, sorted."""
    folder = Path(lora_dir)
    return sorted(p.stem for p in folder.glob(f"*{SUFFIX}") if p.is_file()) if folder.is_dir() else []


def lora_path(lora_dir: Path, name: str) -> Path:
    """The file a job's LoRA name stands for; the name is a plain file name (it came from lora_names)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise InputError(f"{name!r} is not a LoRA name.")
    return Path(lora_dir) / f"{name}{SUFFIX}"


def file_sha256(path: Path) -> str:
    """The file's sha256, read again only when its size or modification time changed."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with Path(path).open("rb") as source:
        while chunk := source.read(1 << 24):
            digest.update(chunk)
    with _hashes_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def matching_names(lora_dir: Path, typed: str, limit: int = 25) -> list[str]:
    """Names for an autocomplete: those starting with what was typed first, then those containing it."""
    typed = typed.strip().lower()
    names = lora_names(lora_dir)
    first = [n for n in names if n.lower().startswith(typed)]
    return (first + [n for n in names if typed in n.lower() and n not in first])[:limit]


def choose_loras(wanted: Sequence[tuple[str, float]], lora_dir: Path) -> tuple[JobLora, ...]:
    """A person's (name, strength) picks as the job's LoRAs with their files' hashes; an InputError written for
    the person when there are too many, a name is unknown or given twice, or a strength is out of range.
    Reads the files (hashing): call it off the event loop."""
    if len(wanted) > MAX_LORAS:
        raise InputError(f"A job takes at most {MAX_LORAS} LoRAs, not {len(wanted)}.")
    names = lora_names(lora_dir)
    by_folded = {name.casefold(): name for name in names}
    chosen: list[JobLora] = []
    for typed, strength in wanted:
        name = typed if typed in names else by_folded.get(typed.strip().casefold())
        if name is None:
            raise InputError(unknown_lora(typed, names))
        if any(lora.name == name for lora in chosen):
            raise InputError(f"The LoRA {name} is named twice; give it once, with one strength.")
        if not (math.isfinite(strength) and abs(strength) <= MAX_STRENGTH):
            raise InputError(f"The LoRA {name}'s strength must be between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                             f"not {strength:g}.")
        chosen.append(JobLora(name, file_sha256(lora_path(lora_dir, name)), float(strength)))
    return tuple(chosen)


def unknown_lora(typed: str, names: list[str]) -> str:
    if not names:
        return f"There is no LoRA named {typed[:60]!r}: this bot has no LoRAs installed."
    # Each name clipped: twenty file names of any length must still fit one chat message.
    shown = ", ".join(name if len(name) <= 60 else name[:59] + "…" for name in names[:20])
    shown += f" and {len(names) - 20} more" if len(names) > 20 else ""
    return f"There is no LoRA named {typed[:60]!r}. LoRAs here: {shown}."


def render_loras(loras: Sequence[JobLora], lora_dir: Path) -> tuple[dict, ...]:
    """A job's LoRAs as the engine's RenderRequest takes them: the file in this machine's LORA_DIR, and the
    hash recorded at queueing, which the engine checks against the file."""
    return tuple({"name": lora.name, "path": str(lora_path(lora_dir, lora.name)), "sha256": lora.sha256,
                  "strength": lora.strength} for lora in loras)
