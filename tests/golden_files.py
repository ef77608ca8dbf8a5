"""The golden files under tests/golden/: the cases, and how a tensor is recorded there.

Small tensors (the prompt and picture embeddings) are stored whole in safetensors. Large ones (a section's
latents, a preview, the cropped picture) are stored as a digest: shape, dtype, the SHA-256 of their bytes
(so equality is exact) and 64 evenly spaced values, so a mismatch can say how far off it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "golden"
SAMPLES = 64


def cpu_kernels(capability: str | None = None, flags: set[str] | None = None) -> str:
    """The CPU kernel family that sets the last bits of bf16 and fp16 work (this machine's by default), which
    names its set of case goldens: torch's vector width ("avx2", "avx512"), then "-bf16" and "-amx" where the
    CPU has the native bf16 dot products and tiles that oneDNN's kernels use (a Zen 4 EPYC: "avx512-bf16")."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags() if flags is None else flags
    extras = [suffix for flag, suffix in (("avx512_bf16", "bf16"), ("amx_bf16", "amx")) if flag in flags]
    return "-".join([capability.lower().replace(" ", "_"), *extras])


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the vector width alone
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


def case_results() -> Path:
    """Where the official demos' case results for this machine's CPU kernel family are (tests/golden/README.md)."""
    return GOLDEN_DIR / "results" / cpu_kernels()


def golden_sets() -> list[Path]:
    """Every kernel family's folder of case results, by name."""
    return sorted(path for path in (GOLDEN_DIR / "results").iterdir() if path.is_dir())


def load_cases() -> list[dict]:
    spec = json.loads((GOLDEN_DIR / "cases.json").read_text())
    return [{**spec["defaults"], **case} for case in spec["cases"]]


def _array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # numpy has no bfloat16: keep the exact bits as int16
        return value.view(torch.int16).numpy() if value.dtype == torch.bfloat16 else value.numpy()
    return np.asarray(value)


def digest(value) -> dict:
    array = np.ascontiguousarray(_array(value))
    flat = array.reshape(-1)
    picks = np.linspace(0, flat.size - 1, min(SAMPLES, flat.size)).round().astype(np.int64)
    return {
        "shape": list(array.shape),
        "dtype": str(value.dtype) if isinstance(value, torch.Tensor) else str(array.dtype),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        "sample": [float(x) for x in flat[picks].astype(np.float64)],
    }


def mismatch(value, golden: dict) -> str | None:
    """None when `value` is bit for bit the recorded one, else what differs."""
    mine = digest(value)
    if mine["shape"] != golden["shape"] or mine["dtype"] != golden["dtype"]:
        return f"shape/dtype {mine['shape']} {mine['dtype']} != golden {golden['shape']} {golden['dtype']}"
    if mine["sha256"] == golden["sha256"]:
        return None
    differences = np.abs(np.array(mine["sample"]) - np.array(golden["sample"]))
    return (f"bytes differ; at {len(differences)} sampled positions: {int((differences > 0).sum())} differ, "
            f"max |diff| {differences.max():.3g}")
