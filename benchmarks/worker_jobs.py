"""Jobs back to back through the real worker (engine/worker.py): its warm-up, its claim loop, the GPU turn
handed to the next job after each job's last decode, the upload copies off the GPU's path.

    python -m benchmarks.worker_jobs --mode high --jobs 4 --seconds 5 --steps 25 --out results.jsonl

benchmarks.engine_e2e calls the engine one job at a time, so it cannot see what a job's tail (its last
segment, the join, the upload copies) costs the next one. Here a SQLite store in a fresh data folder holds N
jobs from two people, and one Worker renders them with the full-size random-weight models placed as the mode's
memory plan says. Writes one JSON line per job (claimed to first step, sampling, decode, claimed to done) and a
summary: jobs per hour from the first claim to the last completion against what the sampling alone allows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.engine_e2e import PROMPTS, write  # the same jobs as engine_e2e's --jobs
from engine.worker import ModelCache, Worker
from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings
from storage.store import open_store


class PlacedModels(ModelCache):
    """The worker's model cache holding models already built and placed: random weights have no folder for
    `check` to find, and `get` hands out what was placed (one variant)."""

    def __init__(self, settings: Settings, models):
        super().__init__(settings)
        self.placed = models
        self.device, self.plan, self.encoders = models.device, models.plan, models.encoders
        self.transformers = {models.variant: models.transformer}

    def check(self, variants) -> None:
        pass

    def get(self, variant):
        return self.placed


class SectionTimes:
    """Each job's sampling and decode seconds and the wall time of its first step, taken from the engine's
    own events on their way to the worker (render is wrapped where the worker looks it up)."""

    def __init__(self):
        self.by_job: dict[str, dict] = {}

    @contextlib.contextmanager
    def watching(self):
        import engine.render

        real = engine.render.render

        def timed(models, image, request, work_dir, video, *, on_step=None, on_section=None, **rest):
            times = self.by_job.setdefault(job_of(work_dir), {"sampling_s": 0.0, "decode_s": 0.0, "sections": []})

            def step(event):
                times.setdefault("first_step_at", time.time())
                if on_step is not None:
                    on_step(event)

            def section(event):
                times["sampling_s"] += event.sample_seconds
                times["decode_s"] += event.decode_seconds
                times["sections"].append({"sample_s": round(event.sample_seconds, 2),
                                          "decode_s": round(event.decode_seconds, 2),
                                          "output_s": round(event.output_seconds, 2)})
                if on_section is not None:
                    on_section(event)

            return real(models, image, request, work_dir, video, on_step=step, on_section=section, **rest)

        engine.render.render = timed
        try:
            yield self
        finally:
            engine.render.render = real


def job_of(work_dir) -> str:
    """The job id in a work folder's path (storage/files.py: <data>/jobs/<id>/work)."""
    return Path(work_dir).parent.name


def random_picture(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def enqueue_jobs(store, jobs: int, params: JobParams) -> list[int]:
    """`jobs` jobs from two people taking turns, each with its own prompt, seed and random picture."""
    ids = []
    for index in range(jobs):
        job = NewJob("telegram", "bench", f"person{index % 2}", PROMPTS[index % len(PROMPTS)],
                     JobParams(**{**params.__dict__, "seed": params.seed + index}))
        ids.append((await store.enqueue(job, random_picture(index))).job_id)
    return ids


async def run_jobs(settings: Settings, models: ModelCache, jobs: int, params: JobParams) -> list[dict]:
    """`jobs` jobs (two people, each job its own prompt and seed) through one Worker; a record per job and a
    summary last. The worker warms up first when the settings say so; that time is reported apart."""
    store = await open_store(settings)
    try:
        ids = await enqueue_jobs(store, jobs, params)
        worker = Worker(store, settings, "bench", models=models)
        started = time.time()
        with SectionTimes().watching() as times:
            # A failed warm-up stops the benchmark (the worker itself would try again after a pause).
            problem = await worker.warm_up() if not worker.warmed else None
            if problem is not None:
                raise RuntimeError(problem)
            if not jobs:  # the start-up alone: run twice on one --work folder, a restart's on the cache
                return [{"bench": "worker_jobs", "summary": "warm_up", "start_up_s": round(time.time() - started, 2),
                         "compile_cache": worker.warm_up_report}]
            await worker.run(max_jobs=jobs)
        finished = [await store.get(job_id) for job_id in ids]
    finally:
        await store.close()
    records = [job_record(job, times.by_job.get(str(job.id), {})) for job in finished]
    return [*records, summary(records, first_claim=min(job.started_at for job in finished), began=started)]


def job_record(job, times: dict) -> dict:
    if job.state is not JobState.DONE:
        raise RuntimeError(f"job {job.id} ended {job.state.value}: {job.error}")
    return {"bench": "worker_jobs", "job": job.id, "person": job.user_id,
            "claimed_to_first_step_s": round(times["first_step_at"] - job.started_at, 2),
            "sampling_s": round(times["sampling_s"], 2), "decode_s": round(times["decode_s"], 2),
            "sections": times["sections"],
            "claimed_to_done_s": round(job.finished_at - job.started_at, 2),
            "claimed_at": job.started_at, "done_at": job.finished_at}


def summary(records: list[dict], first_claim: float, began: float) -> dict:
    """Jobs per hour from the first claim to the last completion, against the jobs per hour of the sampling
    alone (issue 21's back-to-back measure)."""
    span = max(r["done_at"] for r in records) - first_claim
    sampling = sum(r["sampling_s"] for r in records)
    order = sorted(records, key=lambda r: r["claimed_at"])
    overlaps = [round(previous["done_at"] - following["claimed_at"], 2)
                for previous, following in zip(order, order[1:], strict=False)]
    return {"bench": "worker_jobs", "summary": "back_to_back", "jobs": len(records),
            "start_up_s": round(first_claim - began, 2), "span_s": round(span, 2),
            "jobs_per_hour": round(3600 * len(records) / span, 2),
            "sampling_bound_jobs_per_hour": round(3600 * len(records) / sampling, 2),
            "ratio": round(sampling / span, 3),
            "next_claimed_before_last_done_s": overlaps}


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The queued jobs' shape and the workers' speed settings, the same for the benchmarks that queue jobs."""
    parser.add_argument("--jobs", type=int, default=4, help="0: the warm-up alone")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=640)
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--no-warm-up", action="store_true")


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    from benchmarks.placing import place
    from engine.engine_options import EngineOptions
    from engine.memory_plan import high_plan, low_plan, sizes_of_modules
    from engine.prompt_cache import PromptCache
    from engine.sections import Variant
    from engine.speed import repeated_blocks

    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="original")
    parser.add_argument("--mode", default="high", choices=("high", "low"))
    add_job_arguments(parser)
    parser.add_argument("--tiny", type=Path, default=None,
                        help="CPU dry run of this script on a tiny models folder (tests/tiny_models.py), eager")
    parser.add_argument("--work", type=Path, default=Path("/tmp/worker_jobs"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # Timestamps: a run cut off by the device's time limit still tells, from its log, when each job ended.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = "cpu" if args.tiny else "cuda"
    settings = Settings(data_dir=args.work / "data", engine_attention=args.attention, engine_device=device,
                        engine_warm_up=not args.no_warm_up, engine_compile=not args.tiny,
                        render_resolution=args.resolution, max_queued_per_user=args.jobs)
    options = EngineOptions.from_settings(settings)
    variant = Variant.parse(args.variant)
    built = built_models(variant, args.tiny)
    sizes = sizes_of_modules(built.encoders, built.transformer, repeated_blocks(built.transformer))
    plan = {"high": high_plan, "low": low_plan}[args.mode](sizes)
    logging.getLogger(__name__).info("%s", plan.describe(sizes))
    placed = place(built, plan, options, 0.0, PromptCache(settings.data_dir / "cache" / "prompts", "random"))
    params = JobParams(seconds=args.seconds, steps=args.steps, variant=variant.value, resolution=args.resolution)
    records = asyncio.run(run_jobs(settings, PlacedModels(settings, placed), args.jobs, params))
    machine = "cpu" if args.tiny else torch.cuda.get_device_name()
    records = [{**record, "mode": args.mode, "gpu": machine, "torch": torch.__version__} for record in records]
    for record in records:
        write(args.out, record)
    return records


def built_models(variant, tiny: Path | None):
    """The full-size random models on the GPU, or with `tiny` the tests' tiny ones loaded on the CPU."""
    if tiny is not None:
        from engine.models import load_models

        return load_models(variant.value, "cpu", tiny)
    from benchmarks.full_size import full_models

    return full_models(variant)


if __name__ == "__main__":
    main()
