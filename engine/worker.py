"""An engine worker: one process per GPU, claiming jobs from storage and rendering them.

    python -m engine.worker --name gpu0

The render runs in a thread; the asyncio loop beside it renews the job's lease, watches for a
cancel, and writes progress. SIGTERM or SIGINT stops the render after the current step, saves the
step's state, gives the job back to the queue and exits; the next worker resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import statistics
import sys
import threading

from storage.files import JobFiles
from storage.jobs import Job, Progress
from storage.settings import Settings, get_settings
from storage.store import JobStore, open_store

log = logging.getLogger("engine.worker")

IDLE_POLL_SECONDS = 1.0
CANCEL_POLL_SECONDS = 0.5


class ModelCache:
    """Encoders loaded once; one transformer at a time, swapped when a job needs the other variant."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.encoders = None
        self.transformers: dict = {}
        self.device = None
        self.mode = None

    def get(self, variant):
        import torch

        from engine.engine_options import EngineOptions, placement_for
        from engine.models import FramePackModels, load_prepared_encoders, load_prepared_transformer, resolve_device
        from engine.sections import Variant

        variant = Variant.parse(variant)
        options = EngineOptions.from_settings(self.settings)
        if self.device is None:
            self.device = resolve_device(self.settings.engine_device)
            self.mode = options.mode_for(self.device)  # decided once, before anything is loaded
        models_dir, download = self.settings.framepack_models_dir, self.settings.framepack_auto_download
        if self.encoders is None:
            self.encoders = load_prepared_encoders(self.device, self.mode, models_dir, download)
        if variant not in self.transformers:
            self.transformers.clear()  # one 13B transformer in memory at a time
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.transformers[variant] = load_prepared_transformer(variant, self.device, options, self.mode,
                                                                   models_dir, download)
        transformer = self.transformers[variant]
        return FramePackModels(self.encoders, transformer, variant, self.device,
                               placement_for(self.encoders, transformer, self.device))


class JobRun:
    """The state shared between the render thread and the loop for one job."""

    def __init__(self):
        self.cancel = threading.Event()  # the person cancelled, or the lease was lost
        self.lease_lost = False
        self.step_seconds: list[float] = []
        self.section_overheads: list[float] = []


class Worker:
    def __init__(self, store: JobStore, settings: Settings, name: str, models: ModelCache | None = None):
        self.store = store
        self.settings = settings
        self.name = name
        self.models = models or ModelCache(settings)
        self.stopping = threading.Event()  # shutdown: finish the step, save, give the job back
        self.files = JobFiles(settings.data_dir)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping after the current step", self.name)
        self.stopping.set()

    async def run(self, max_jobs: int | None = None) -> None:
        done = 0
        log.info("%s: waiting for jobs", self.name)
        while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
            await self.store.heartbeat(self.name)
            job = await self.store.claim(self.name)
            if job is None:
                await asyncio.sleep(IDLE_POLL_SECONDS)
                continue
            await self.process(job)
            done += 1
        log.info("%s: stopped", self.name)

    async def _watch(self, job: Job, run: JobRun, rendering: asyncio.Future) -> None:
        """Renew the lease and poll for a cancel until the render ends."""
        renew_every = max(self.settings.lease_seconds / 4, 0.05)
        since_renew = 0.0
        while not rendering.done():
            await asyncio.sleep(min(CANCEL_POLL_SECONDS, renew_every))
            since_renew += min(CANCEL_POLL_SECONDS, renew_every)
            if since_renew >= renew_every:
                since_renew = 0.0
                if not await self.store.renew(job.id, self.name):
                    log.warning("%s: lost the lease on job %d; stopping it", self.name, job.id)
                    run.lease_lost = True
                    run.cancel.set()
            if await self.store.is_cancel_requested(job.id):
                run.cancel.set()

    async def process(self, job: Job) -> None:
        from engine.render import Cancelled, Paused, RenderRequest, render
        from engine.video import fit_to_size
        from storage.inputs import InputError, load_image

        loop = asyncio.get_running_loop()
        run = JobRun()
        p = job.params
        log.info("%s: job %d: %s, %g s, %s, %d steps, seed %d", self.name, job.id, p.variant, p.seconds,
                 f"{p.resolution}px", p.steps, p.seed)

        def report(progress: Progress) -> None:
            asyncio.run_coroutine_threadsafe(self.store.report_progress(job.id, self.name, progress), loop)

        def on_step(event) -> None:
            if event.step > 1:  # the first step of a section carries the section's set-up
                run.step_seconds.append(event.seconds_per_step)
            at[0] = (event.section, event.step)
            report(Progress(event.section, event.sections, event.step, event.steps, last_preview[0], frames[0]))

        last_preview: list[str | None] = [None]
        frames = [0]
        at = [(0, 0)]  # (section, step) last reported by on_step

        def on_section(event) -> None:
            # Called from render's output thread, usually while the next section samples: keep that
            # section's step in the progress and bring in the new preview and frame count.
            last_preview[0], frames[0] = str(event.gif), event.frames_done
            run.section_overheads.append(event.decode_seconds + event.blocked_seconds)
            section, step = max((event.section, p.steps), at[0])
            report(Progress(section, event.sections, step, p.steps, last_preview[0], frames[0]))

        def work():
            models = self.models.get(p.variant)
            image = load_image(self.files.input_path(job.id), max_pixels=10**9)
            request = RenderRequest(prompt=job.prompt, seconds=p.seconds, variant=p.variant, seed=p.seed,
                                    steps=p.steps, resolution=p.resolution, crf=self.settings.video_crf,
                                    teacache=p.teacache or self.settings.engine_teacache)
            video = self.files.video_path(job.id)
            render(models, image, request, self.files.work_dir(job.id), video, on_step=on_step,
                   on_section=on_section, should_cancel=run.cancel.is_set, should_pause=self.stopping.is_set)
            fitted = {}
            for limit in p.upload_limits:
                fitted[limit] = str(fit_to_size(video, self.files.fitted_path(job.id, limit), limit))
            return str(video), fitted

        rendering = loop.run_in_executor(None, work)
        watcher = asyncio.ensure_future(self._watch(job, run, rendering))
        try:
            video, fitted = await rendering
        except Paused:
            await self.store.release(job.id, self.name)
            log.info("%s: job %d given back to the queue at its last step", self.name, job.id)
            return
        except Cancelled:
            if run.lease_lost:
                return  # another worker owns it now
            await self.store.mark_cancelled(job.id, self.name)
            log.info("%s: job %d cancelled", self.name, job.id)
            return
        except InputError as error:
            await self.store.fail(job.id, self.name, str(error))
            return
        except Exception as error:  # the job fails, the worker lives on for the next one
            log.exception("%s: job %d failed", self.name, job.id)
            await self.store.fail(job.id, self.name, f"The render failed: {type(error).__name__}: {error}")
            return
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self.store.complete(job.id, self.name, video, fitted)
        if run.step_seconds:
            overhead = statistics.median(run.section_overheads) if run.section_overheads else 0.0
            # TeaCache skips the transformer on some steps: the mean is its speed, a median would pick
            # a skipped or a full step. Only the job's own threshold counts as TeaCache here; the
            # worker's ENGINE_TEACACHE is part of its plain figure.
            teacache = p.teacache > 0
            step = statistics.fmean(run.step_seconds) if teacache else statistics.median(run.step_seconds)
            await self.store.record_speed(self.name, step, overhead, teacache=teacache)


async def main_async(name: str, max_jobs: int | None) -> None:
    settings = get_settings()
    store = await open_store(settings)
    worker = Worker(store, settings, name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run(max_jobs)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(main_async(args.name, args.max_jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

