"""A whole job on the GPU with full-size random models: encoders, every section, VAE decode, MP4.

    python -m benchmarks.engine_e2e --modes high,low --seconds 5 --steps 25 --out results.jsonl

Each mode runs the same job in this one process (the models are built once, then moved where the mode
wants them, as engine/engine_options.py does at load time). Writes one JSON line per job: phase times,
seconds per step per section, peak GPU memory of the job, host memory per section.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from benchmarks.full_size import full_models
from benchmarks.placing import place
from engine.engine_options import EngineOptions
from engine.memory_plan import high_plan, low_plan, sizes_of_modules
from engine.models import FramePackModels
from engine.prompt_cache import PromptCache
from engine.render import Paused, RenderRequest, render
from engine.sections import Variant
from engine.speed import block_attention_backend, repeated_blocks
from engine.warmup import use_compile_cache, warm_up


def run(models: FramePackModels, mode: str, request: RenderRequest, work: Path, fresh: bool = True,
        pause_after_s: float | None = None) -> dict:
    """One job; `fresh=False` resumes from `work`'s checkpoint; `pause_after_s` stops at a section's end."""
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    allocated_at_start = torch.cuda.memory_allocated()
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    step_times: dict[int, list[float]] = {}
    section_done: list[float] = []
    phases: list[dict] = []
    rss: list[float] = []
    first_step: list[float] = []
    process = psutil.Process()
    full_passes = [0]  # calls that ran the blocks; with TeaCache the others were skipped
    counter = models.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda *_: full_passes.__setitem__(0, full_passes[0] + 1))
    start = time.perf_counter()

    def on_step(event):
        if not first_step:
            first_step.append(time.perf_counter() - start)
        step_times.setdefault(event.section, []).append(event.seconds_per_step)

    def on_section(event):
        section_done.append(time.perf_counter() - start)
        rss.append(round(process.memory_info().rss / 2**30, 2))
        phases.append({"sample_s": round(event.sample_seconds, 2), "decode_s": round(event.decode_seconds, 2),
                       "output_s": round(event.output_seconds, 2), "blocked_s": round(event.blocked_seconds, 2)})
        print(f"section {event.section}/{event.sections} at {section_done[-1]:.1f} s {phases[-1]} "
              f"rss {rss[-1]} GB peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GB", flush=True)

    def should_pause() -> bool:
        return pause_after_s is not None and time.perf_counter() - start > pause_after_s

    try:
        result = render(models, picture, request, work, work / "out.mp4", on_step=on_step, on_section=on_section,
                        should_pause=should_pause)
    except Paused:
        result = None
    finally:
        counter.remove()
    total = time.perf_counter() - start
    per_section = {k: round(statistics.median(v[1:] or v), 4) for k, v in step_times.items()}
    done = {
        "resumed_from_section": result.resumed_from_section if result else None,
        "paused_after_section": None if result else max(step_times, default=0),
    }
    if result is None:  # the rest of the job runs in the next call, from the checkpoint
        return {"bench": "engine_e2e", "mode": mode, "seconds": request.seconds, "steps": request.steps,
                "sections": request.sections, **done, "median_s_per_step_by_section": per_section,
                "section_end_times_s": [round(x, 2) for x in section_done], "section_phases": phases,
                "host_rss_gb_after_each_section": rss, "run_s": round(total, 2),
                "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_host_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    return {
        **done,
        "bench": "engine_e2e",
        "variant": request.variant.value,
        "mode": mode,
        "resolution": f"{result.width}x{result.height}",
        "seconds": request.seconds,
        "steps": request.steps,
        "teacache": request.teacache,
        "model_calls_with_blocks": full_passes[0],
        "sections": request.sections,
        "frames": result.frames,
        "encode_until_first_step_s": round(first_step[0], 2),
        "median_s_per_step": round(statistics.median(per_section.values()), 4),
        "median_s_per_step_by_section": per_section,
        "section_end_times_s": [round(x, 2) for x in section_done],
        "section_phases": phases,
        "host_rss_gb_after_each_section": rss,
        "total_job_s": round(total, 2),
        "gpu_allocated_at_start_gb": round(allocated_at_start / 2**30, 2),
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
    parser.add_argument("--modes", default="high", help="comma-separated: high, low (run in this order)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--teacache", default="0", help="TeaCache thresholds, comma-separated: one job each")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-vae", action="store_true", help="compile the VAE decoder too (ENGINE_COMPILE_VAE)")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/engine_e2e"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--crf", type=int, default=RenderRequest.crf,
                        help="x264 quality; a high value keeps a paused job's folder small enough to carry")
    parser.add_argument("--note", default="")
    parser.add_argument("--resume", action="store_true", help="continue the job found in --work")
    parser.add_argument("--pause-after-s", type=float, default=None,
                        help="stop (resumably) once this long has passed since the script started")
    parser.add_argument("--jobs", type=int, default=1,
                        help="jobs in a row per mode, each with its own prompt and seed (back to back)")
    parser.add_argument("--warm-up", action="store_true",
                        help="warm up as a worker does (engine/warmup.py) before each mode's first job")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="torch's compile cache folder (a second process on the same folder shows a restart)")
    args = parser.parse_args()
    if args.compile_cache is not None:
        use_compile_cache(args.compile_cache)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the engine's choices, e.g. attention
    variant = Variant.parse(args.variant)
    options = EngineOptions(compile=not args.no_compile, compile_vae=args.compile_vae, attention=args.attention,
                            fp8=args.fp8, cache_dir=args.work.parent / "framepack_cache")
    t0 = time.perf_counter()
    built = full_models(variant)
    torch.cuda.synchronize()
    print(f"built the models in {time.perf_counter() - t0:.1f} s", flush=True)
    sizes = sizes_of_modules(built.encoders, built.transformer, repeated_blocks(built.transformer))
    runs = [(name, float(threshold)) for name in args.modes.split(",") for threshold in args.teacache.split(",")]
    for mode, threshold in runs:
        t = time.perf_counter()
        plan = {"high": high_plan, "low": low_plan}[mode](sizes)
        models = place(built, plan, options, 0.0, PromptCache(options.cache_dir / "prompts", "random weights"))
        prepared = time.perf_counter() - t
        common = {"prepare_s": round(prepared, 1), "compile": options.compile,
                  "compile_vae": options.compile and options.compile_vae, "fp8": options.fp8,
                  "attention": options.attention, "note": args.note,
                  "attention_in_blocks": repr(block_attention_backend(models.transformer))}
        if args.warm_up:
            warmed = warm_up(models, 640, args.work.parent / "warm-up")
            write(args.out, {"bench": "engine_e2e", "mode": mode, "warm_up_s": round(warmed.seconds, 2),
                             "compile_cache_hits": warmed.cache_hits, "compile_cache_misses": warmed.cache_misses,
                             "compile_cache": str(args.compile_cache), **common})
        records = []
        for index in range(args.jobs):
            request = RenderRequest(prompt=PROMPTS[index % len(PROMPTS)], seconds=args.seconds, seed=31337 + index,
                                    variant=variant, steps=args.steps, teacache=threshold, crf=args.crf)
            pause_after_s = None if args.pause_after_s is None else args.pause_after_s - (time.perf_counter() - t0)
            record = run(models, mode, request, args.work, fresh=not args.resume, pause_after_s=pause_after_s)
            records.append({**record, **common, "job_in_a_row": index + 1, "warmed_up": args.warm_up,
                            **job_phases(record)})
            write(args.out, records[-1])
        if len(records) > 1:
            write(args.out, back_to_back(mode, records))


PROMPTS = ("A character doing some simple body movements.", "The girl dances gracefully, with clear movements.",
           "A man walks along the beach as the waves roll in.", "The cat stretches, yawns and looks around.")


def write(out: Path, record: dict) -> None:
    with out.open("a") as sink:
        sink.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def job_phases(record: dict) -> dict:
    """A whole job split as issue 21 reports it: start to first step, sampling, decode, the whole job."""
    phases = record.get("section_phases", [])
    return {"start_to_first_step_s": record.get("encode_until_first_step_s"),
            "sampling_s": round(sum(p["sample_s"] for p in phases), 2),
            "decode_s": round(sum(p["decode_s"] for p in phases), 2),
            "whole_job_s": record.get("total_job_s", record.get("run_s"))}


def back_to_back(mode: str, records: list[dict]) -> dict:
    """Jobs per hour in a row against what the sampling alone would allow, and the first job against the
    second."""
    whole = sum(r["whole_job_s"] for r in records)
    sampling = sum(r["sampling_s"] for r in records)
    return {"bench": "engine_e2e", "mode": mode, "summary": "back_to_back", "jobs": len(records),
            "jobs_per_hour": round(3600 * len(records) / whole, 2),
            "sampling_bound_jobs_per_hour": round(3600 * len(records) / sampling, 2),
            "ratio": round(sampling / whole, 3),
            "first_vs_second_job": round(records[0]["whole_job_s"] / records[1]["whole_job_s"], 3),
            "warm_job_vs_its_sampling": [round(r["whole_job_s"] / r["sampling_s"], 3) for r in records[1:]]}


if __name__ == "__main__":
    main()
