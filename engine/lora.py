"""HunyuanVideo LoRAs on the FramePack transformer: choosing them, checking a file, switching between jobs.

A job names up to MAX_LORAS LoRA files with a strength each (LoraChoice, kept in the RenderRequest with the
file's sha256, so that a re-roll is exact). At a job's start `use_loras` puts them on the loaded transformer
and takes off the last job's, without reloading the model: nothing happens when the job asks for what is
already on. The formats: engine/lora_formats.py; the names: engine/lora_names.py; how they go on:
engine/lora_apply.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.lora_apply import applied, match_lora, put_on, take_off
from engine.lora_formats import LoraError, LoraFile, read_lora_file
from storage.lora_catalog import MAX_LORAS, MAX_STRENGTH, SUFFIX  # one limit for the chats and the engine

__all__ = ["MAX_LORAS", "LoraChoice", "LoraError", "LoraReport", "check_lora", "choices_problem", "gpu_reserve_bytes",
           "list_loras", "resolve_lora", "use_loras"]

# Beyond the pairs' weights, while a job with LoRAs samples: rank-32 LoRAs over every attention and
# feed-forward linear raised an H200's peak by 0.48 GiB for one (0.27 GiB of pairs) and 0.95 GiB for three
# (0.81 GiB) (benchmarks/results/2026-12-03_lora_h200.jsonl).
LORA_WORKSPACE = int(0.25 * 2**30)



@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a job: its name (as users pick it), its file, the file's sha256 and the strength."""

    name: str
    path: str
    sha256: str = ""  # empty: not checked against the file at the job's start
    strength: float = 1.0

    @classmethod
    def of(cls, value: LoraChoice | dict) -> LoraChoice:
        """From itself or its dict (a request rebuilt from asdict or JSON)."""
        return value if isinstance(value, LoraChoice) else cls(**value)

    def made_with(self) -> dict:
        """What the video's metadata keeps (storage/video_metadata.py MadeWith.loras)."""
        return {"name": self.name, "sha256": self.sha256, "strength": self.strength}


def choices_problem(loras) -> str | None:
    """Why these LoRA choices cannot make a job, in words for the person; None when they can."""
    if len(loras) > MAX_LORAS:
        return f"A job takes at most {MAX_LORAS} LoRAs, not {len(loras)}."
    names = [lora.name for lora in loras]
    if len(set(names)) != len(names):
        return "Each LoRA can be named once per job; give one strength instead."
    for lora in loras:
        if not (math.isfinite(lora.strength) and abs(lora.strength) <= MAX_STRENGTH):
            return f"The LoRA {lora.name}'s strength must be between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}."
    return None


def list_loras(lora_dir: Path) -> list[Path]:
    """The LoRA files an admin put in the folder, by name."""
    folder = Path(lora_dir)
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def gpu_reserve_bytes(lora_dir: Path | None) -> int:
    """The GPU memory a job's LoRAs may need, for the memory plan to leave free: the MAX_LORAS largest files
    in the folder as bf16 pairs on the GPU (unfused, the default), and their workspace; 0 with no LoRA.
    Read from the files' headers: nothing is loaded. A larger file added later needs a worker restart."""
    from engine.memory_plan import file_tensor_bytes

    sizes = []
    for path in list_loras(lora_dir) if lora_dir else []:
        try:
            sizes.append(sum(file_tensor_bytes(path, itemsize=2).values()))  # bf16 on the GPU
        except Exception:  # noqa: BLE001 (a file that does not read is refused at its check, not here)
            continue
    largest = sorted(sizes, reverse=True)[:MAX_LORAS]
    return sum(largest) + LORA_WORKSPACE if largest else 0


def resolve_lora(spec: str, lora_dir: Path) -> LoraChoice:
    """'NAME[:STRENGTH]' (a file NAME.safetensors in `lora_dir`) or 'PATH[:STRENGTH]' -> the choice with its
    file's sha256; a LoraError says what is wrong."""
    target, strength = _split_strength(spec)
    path = Path(target)
    if not (path.suffix == SUFFIX or path.parent != Path(".")):
        path = Path(lora_dir) / f"{target}{SUFFIX}"
    if not path.is_file():
        names = ", ".join(p.stem for p in list_loras(lora_dir)) or "none"
        raise LoraError(f"No LoRA named {target!r} (looked for {path}); in {lora_dir}: {names}.")
    lora = read_lora_file(path)
    return LoraChoice(name=path.stem, path=str(path.resolve()), sha256=lora.sha256, strength=strength)


def _split_strength(spec: str) -> tuple[str, float]:
    target, sep, number = spec.rpartition(":")
    if sep:
        try:
            return target, float(number)
        except ValueError:
            pass
    return spec, 1.0


@dataclass
class LoraReport:
    """A file checked against the transformer: what matched, and why it is refused when it is."""

    path: Path
    sha256: str = ""
    matched: int = 0  # the file's modules that found their linears
    linears: int = 0  # the transformer's linears they change
    unmatched: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if not self.ok:
            return f"{self.path.name}: refused: {self.problem}"
        return (f"{self.path.name}: ok, {self.matched} LoRA modules on {self.linears} linears "
                f"(sha256 {self.sha256[:12]})")


def check_lora(path: Path, transformer: nn.Module) -> LoraReport:
    """Whether `path` loads onto `transformer`: never raises for a bad file, the report says why."""
    report = LoraReport(Path(path))
    try:
        lora = read_lora_file(path)
    except LoraError as error:
        report.problem = str(error)
        return report
    match = match_lora(lora, transformer)
    report.sha256, report.matched, report.linears = lora.sha256, len(match.matched), len(match.updates)
    report.unmatched = match.unmatched + match.mismatched
    report.problem = match.problem(report.path.name)
    return report


def use_loras(transformer: nn.Module, loras, device: torch.device | str, fused: bool = False) -> None:
    """Put `loras` (LoraChoice or their dicts) on the transformer in place of whatever is on it; strength 0
    counts as absent. Raises LoraError for a file that changed since it was chosen or does not fit."""
    chosen = [LoraChoice.of(lora) for lora in loras]
    chosen = [lora for lora in chosen if lora.strength != 0]
    key = tuple((lora.sha256 or lora.path, float(lora.strength)) for lora in chosen)
    state = applied(transformer)
    if state is not None and state.key == key and state.fused == fused:
        return
    weighted = [(_matched(_read_checked(lora), transformer), lora.strength) for lora in chosen]  # before taking off
    take_off(transformer)
    if weighted:
        put_on(transformer, weighted, key, torch.device(device), fused)


def _read_checked(lora: LoraChoice) -> LoraFile:
    try:
        read = read_lora_file(Path(lora.path))
    except LoraError as error:
        raise LoraError(f"The LoRA {lora.name} cannot be used: {error}") from None
    if lora.sha256 and read.sha256 != lora.sha256:
        raise LoraError(f"The LoRA {lora.name} changed since this job was made (its file's sha256 is not the one "
                        "recorded), so the job cannot be rendered as asked.")
    return read


def _matched(lora: LoraFile, transformer: nn.Module):
    match = match_lora(lora, transformer)
    problem = match.problem(lora.path.name)
    if problem:
        raise LoraError(problem)
    return match
