"""A whole job on the GPU with full-size random models: encoders, every section, VAE decode, MP4.

    python -m benchmarks.engine_e2e --seconds 5 --steps 25 --out results.jsonl

Writes one JSON line per run: phase times, seconds per step per section, peak GPU and host memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.full_size import full_models
from engine.render import RenderRequest, render
from engine.sections import Variant


def run(variant: Variant, seconds: float, steps: int, work: Path) -> dict:
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    models = full_models(variant)
    torch.cuda.synchronize()
    built = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    request = RenderRequest(prompt="A character doing some simple body movements.", seconds=seconds,
                            variant=variant, steps=steps)
    step_times: dict[int, list[float]] = {}
    section_done: list[float] = []
    phases: list[dict] = []
    first_step: list[float] = []
    start = time.perf_counter()

    def on_step(event):
        if not first_step:
            first_step.append(time.perf_counter() - start)
        step_times.setdefault(event.section, []).append(event.seconds_per_step)

    def on_section(event):
        section_done.append(time.perf_counter() - start)
        phases.append({"sample_s": round(event.sample_seconds, 2), "decode_s": round(event.decode_seconds, 2),
                       "output_s": round(event.output_seconds, 2)})

    result = render(models, picture, request, work, work / "out.mp4", on_step=on_step, on_section=on_section)
    total = time.perf_counter() - start
    per_section = {k: statistics.median(v[1:] or v) for k, v in step_times.items()}
    return {
        "bench": "engine_e2e",
        "variant": variant.value,
        "mode": "high_vram",
        "resolution": f"{result.width}x{result.height}",
        "seconds": seconds,
        "steps": steps,
        "sections": request.sections,
        "frames": result.frames,
        "build_models_s": round(built, 2),
        "encode_until_first_step_s": round(first_step[0], 2),
        "median_s_per_step_by_section": {k: round(v, 4) for k, v in per_section.items()},
        "section_end_times_s": [round(x, 2) for x in section_done],
        "section_phases": phases,
        "total_job_s": round(total, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_host_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "mp4_bytes": result.video.stat().st_size,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="original")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--work", type=Path, default=Path("/tmp/engine_e2e"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = run(Variant.parse(args.variant), args.seconds, args.steps, args.work)
    with args.out.open("a") as sink:
        sink.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
