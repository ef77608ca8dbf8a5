"""`framepack-bot doctor`: can the bot run on this machine, with which memory plan, how fast, and what would
make it faster; can it reach its database and bucket. Exit code 0 when it can run here, 1 with the reasons
when it cannot.

Speeds are measured figures (benchmarks/results), for the GPUs they were measured on; for another GPU the
doctor says it has no figure rather than guessing one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.memory_plan import FULL_SIZE, GB, MemoryPlan, load_peak
from engine.worker import free_disk_bytes
from storage.files import nearest_existing

# Seconds per step at 640x608 with today's defaults (compiled blocks, the auto attention kernel), whole-job
# overhead per section besides the steps (decode, writing), measured with full-size random weights.
MEASURED = {  # GPU name -> (s/step with FA3 installed, s/step with PyTorch's attention, overhead per section)
    "NVIDIA H200": (0.802, 0.862, 4.0),
    "NVIDIA H100 80GB HBM3": (0.866, 0.89, 4.5),
}
FIVE_SECOND_VIDEO = (4, 25)  # sections and steps of a 5 s job at the defaults


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def text(self) -> str:
        out = list(self.lines)
        if self.advice:
            out += ["", "To go faster or fit better:", *(f"  - {a}" for a in self.advice)]
        out += ["", "The bot can run here." if not self.problems else "The bot cannot run here:",
                *(f"  - {p}" for p in self.problems)]
        return "\n".join(out)


def _gpus(report: Report) -> list[torch.device]:
    if not torch.cuda.is_available():
        report.say("GPUs: none visible to PyTorch (CUDA not available)")
        return []
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    for device in devices:
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        report.say(f"GPU {device.index}: {name} (compute capability {major}.{minor}), "
                   f"{total / GB:.1f} GiB, {free / GB:.1f} GiB free")
    return devices


def _memory(report: Report, settings) -> None:
    from engine.memory_modes import available_ram_bytes

    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    report.say(f"RAM: {total / GB:.1f} GiB, {available_ram_bytes() / GB:.1f} GiB available")
    for label, folder in (("data folder", Path(settings.data_dir)), ("models", _models_folder(settings))):
        report.say(f"free disk for the {label} ({folder}): {free_disk_bytes(folder) / GB:.1f} GiB")


def _models_folder(settings) -> Path:
    if settings.framepack_models_dir is not None:
        return Path(settings.framepack_models_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _attention(report: Report, devices: list[torch.device]) -> None:
    from engine.flash3_attention import load
    from engine.speed import frontend_available

    fa3, frontend = load() if devices else "no GPU", frontend_available()
    report.say(f"FlashAttention-3: {'installed' if fa3 is None else 'not available (' + fa3 + ')'}")
    report.say(f"cuDNN frontend (FP8 attention): {'installed' if frontend is None else 'not available'}")
    hopper = any(torch.cuda.get_device_capability(d)[0] >= 9 for d in devices)
    if hopper and fa3 is not None:
        report.advice.append("install FlashAttention-3 (README, Speed and memory): 0.80 against 0.86 s/step on an "
                             "H200")
    if devices and any(torch.cuda.get_device_capability(d) >= (8, 9) for d in devices):
        report.advice.append("ENGINE_FP8=true: FP8 linears, 1.5-1.8x faster a step, the video changes slightly"
                             + ("" if frontend is None else "; with `pip install nvidia-cudnn-frontend` the "
                                "attention runs in FP8 too on Hopper"))


def _weights(report: Report, settings) -> bool:
    from engine.models import ModelsNotFound, locate, parts_for
    from engine.sections import Variant

    variants = [Variant.parse(v) for v in settings.allowed_variants.split(",")]
    try:
        locate(parts_for(variants), settings.framepack_models_dir, allow_download=False)
    except ModelsNotFound as error:
        if settings.framepack_auto_download:
            report.say(f"weights: not all here yet; they download on first use (about 45 GB). {error}")
            return True
        report.problems.append(f"{error}")
        return False
    report.say(f"weights: present for {', '.join(v.value for v in variants)}")
    return True


def _plan(report: Report, settings, device: torch.device | None) -> MemoryPlan | None:
    from engine.engine_options import EngineOptions, choose_plan
    from engine.models import checkpoint_sizes
    from engine.sections import Variant

    options = EngineOptions.from_settings(settings)
    try:
        sizes = checkpoint_sizes(Variant.ORIGINAL, device or torch.device("cpu"), options,
                                 settings.framepack_models_dir, allow_download=False)
    except Exception:  # weights not here: plan for the full stack's known sizes
        sizes = FULL_SIZE
    if device is None:
        return None
    plan = choose_plan(options, device, sizes)
    report.say(plan.describe(sizes))
    peak = load_peak(plan, sizes)
    report.say(f"loading: private RAM peaks near {peak / GB:.1f} GiB (the weights are mapped, not read whole)")
    ram = options.budget(device).ram
    if peak > ram:
        report.problems.append(f"loading the weights needs about {peak / GB:.0f} GiB of RAM and {ram / GB:.0f} GiB "
                               "is available")
    if plan.name.endswith("over its GPU budget"):
        report.problems.append(f"even the smallest plan needs {plan.gpu_bytes / GB:.1f} GiB of GPU memory; "
                               "free some (other programs on the GPU?) or use a larger GPU")
    if plan.blocks_from == "mapped" or plan.llama == "mapped":
        report.advice.append("more RAM: part of the weights stream from the page cache (a file), slower than "
                             "from pinned memory")
    if plan.streams_blocks and not options.fp8:
        report.advice.append("ENGINE_FP8=true keeps the blocks in FP8: half the RAM and half the bytes streamed a "
                             "step (on GPUs without FP8 tensor cores they are widened to bf16 per call); the video "
                             "changes slightly")
    return plan


def _speed(report: Report, device: torch.device | None, plan: MemoryPlan | None) -> None:
    from engine.flash3_attention import load

    if device is None or plan is None:
        return
    name = torch.cuda.get_device_name(device)
    if name not in MEASURED:
        report.say(f"speed: no measurement for a {name} yet (an H200 runs 0.80-0.86 s/step, 2 minutes per 5 s video)")
        return
    fa3_step, sdpa_step, overhead = MEASURED[name]
    step = fa3_step if load() is None else sdpa_step
    sections, steps = FIVE_SECOND_VIDEO
    note = "" if plan.name == "high" else " (measured with every block on the GPU; on an H200 the 12 GB plan ran " \
                                          "1.08x that at a PCIe 4.0 link's 25 GB/s, the 8 GB plan 1.07x)"
    report.say(f"expected: {step:.2f} s a step, about {sections * (steps * step + overhead) / 60:.1f} min for a 5 s "
               f"video at 25 steps{note}")


def _storage(report: Report, settings) -> None:
    """The database and the bucket this host's settings name (storage/reachability.py), when a worker or a
    frontends process would need them."""
    from storage.reachability import check_bucket, check_database

    for label, check in (("database", check_database(settings)), ("bucket", check_bucket(settings))):
        if check is None:
            report.say(f"{label}: none (job files in the data folder alone)")
        elif check.ok:
            report.say(f"{label}: {check.message}")
        else:
            report.say(f"{label}: unreachable")
            report.problems.append(check.message)


def diagnose(settings) -> Report:
    """Everything the doctor looks at; `problems` say why the bot cannot run here."""
    report = Report()
    devices = _gpus(report)
    _memory(report, settings)
    _attention(report, devices)
    _weights(report, settings)
    device = devices[0] if devices else None
    if device is None and not (settings.engine_device or "").startswith("cpu"):
        report.problems.append("No CUDA GPU is visible: FramePack's 13B transformer needs an NVIDIA GPU "
                               "(set ENGINE_DEVICE=cpu to render on the CPU anyway: hours per second of video)")
    plan = _plan(report, settings, device)
    _speed(report, device, plan)
    if not os.access(nearest_existing(settings.data_dir), os.W_OK):
        report.problems.append(f"the data folder {settings.data_dir} cannot be written")
    _storage(report, settings)
    return report
