"""An engine worker: one process per GPU, claiming jobs from storage and rendering them.

    python -m engine.worker --name gpu0

The render runs in a thread; the asyncio loop beside it renews the job's lease, watches for a
cancel, and writes progress. SIGTERM or SIGINT stops the render after the current step, saves the
step's state, gives the job back to the queue and exits; the next worker resumes it.

A worker that cannot render (no GPU, weights missing or unreadable, its disk full) is not the jobs'
fault: it claims nothing, says why in its heartbeat (the chats show it, the admins are told once), and
tries again after a pause that grows to a few minutes. A job it had taken goes back to the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from engine.gpu_turn import GpuTurn
from engine.store_outage import StoreOutage
from storage.eta import CFG_FACTOR
from storage.files import JobFiles, nearest_existing
from storage.jobs import Job, Progress
from storage.log_setup import configure_logging
from storage.settings import Settings, SettingsError, get_settings
from storage.store import EXIT_CANNOT_START, JobStore, open_store
from storage.wakeups import wait_for_work

log = logging.getLogger("engine.worker")

IDLE_POLL_SECONDS = 1.0
CANCEL_POLL_SECONDS = 0.5
OUTAGE_RETRY_SECONDS = 2.0  # the queue's database away: the claim loop tries it again this often
NOT_READY_PAUSE_FIRST, NOT_READY_PAUSE_MAX = 5.0, 300.0
READY_CHECK_SECONDS = 30.0  # while ready, the device and weight folders are looked at again this often
MIN_FREE_DISK_BYTES = 512 * 2**20  # below this the data folder's disk counts as full: checkpoints need room
FAILED_TEXT = "The render failed on the server; the bot's operator can find why in the worker's log."


class WorkerFault(Exception):
    """This worker cannot render now (the device, the weights, the disk): the job is not at fault.
    The message is for the log and the admins: no secrets, no stack."""


def _device_name(device) -> str:
    """The name of a CUDA device ("NVIDIA H200"), else the device kind ("cpu")."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return device.type


def disk_trouble(error: BaseException, data_dir: Path | None = None) -> bool:
    """A full disk (or quota) anywhere in the error's chain. ffmpeg dying of ENOSPC reaches Python as a broken
    pipe with ffmpeg's own text, so that text and the data folder's free space count too."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, OSError) and data_dir is not None:
        return free_disk_bytes(data_dir) < MIN_FREE_DISK_BYTES
    return False


def free_disk_bytes(folder: Path) -> int:
    return shutil.disk_usage(nearest_existing(folder)).free


class ModelCache:
    """Encoders loaded once; one transformer at a time, swapped when a job needs the other variant."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.encoders = None
        self.transformers: dict = {}
        self.device = None
        self.plan = None
        self.prompt_cache = None

    def check(self, variants) -> None:
        """What a render needs before any weight is loaded: the device, and every weight folder of
        `variants` present. Raises WorkerFault saying what is wrong."""
        from engine.models import DeviceUnavailable, ModelsNotFound, locate, parts_for, resolve_device
        from engine.sections import Variant

        try:
            resolve_device(self.settings.engine_device)
            locate(parts_for([Variant.parse(v) for v in variants]), self.settings.framepack_models_dir,
                   self.settings.framepack_auto_download)
        except (DeviceUnavailable, ModelsNotFound, ValueError) as error:
            raise WorkerFault(str(error)) from None

    def get(self, variant):
        import torch

        from engine.engine_options import EngineOptions, placement_for
        from engine.models import (
            FramePackModels,
            load_prepared_encoders,
            load_prepared_transformer,
            plan_loading,
            resolve_device,
        )
        from engine.prompt_cache import prompt_cache_for
        from engine.sections import Variant

        variant = Variant.parse(variant)
        options = EngineOptions.from_settings(self.settings)
        models_dir, download = self.settings.framepack_models_dir, self.settings.framepack_auto_download
        if self.plan is None:  # made once, from the weights' sizes, before anything is loaded (kept only whole)
            device = resolve_device(self.settings.engine_device)
            plan = plan_loading(variant, device, options, models_dir, download)
            self.device, self.plan = device, plan
        if self.encoders is None:
            self.encoders = load_prepared_encoders(self.device, options, self.plan, models_dir, download)
        if variant not in self.transformers:
            self.transformers.clear()  # one 13B transformer in memory at a time
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.transformers[variant] = load_prepared_transformer(variant, self.device, options, self.plan,
                                                                   models_dir, download)
        transformer = self.transformers[variant]
        if self.prompt_cache is None:
            self.prompt_cache = prompt_cache_for(options.cache_dir, self.encoders)
        return FramePackModels(self.encoders, transformer, variant, self.device,
                               placement_for(self.encoders, transformer, self.device, self.plan), self.plan,
                               self.prompt_cache)


class JobRun:
    """The state shared between the render thread and the loop for one job."""

    def __init__(self):
        self.cancel = threading.Event()  # the person cancelled, or the lease was lost
        self.lease_lost = False
        self.step_seconds: list[float] = []
        self.section_overheads: list[float] = []


class JobOutcomes:
    """Counts the jobs that ended (a job given back for a worker fault does not count) toward `run(max_jobs)`.
    A job may still be writing its last output while the next one renders: its outcome comes later, and no
    more jobs are claimed than could still be needed."""

    def __init__(self, max_jobs: int | None):
        self.max_jobs = max_jobs
        self.outcomes: list[asyncio.Future[bool]] = []

    def add(self, outcome: asyncio.Future[bool]) -> None:
        self.outcomes.append(outcome)

    def _counted(self) -> int:
        # A job whose finishing crashed (logged by the worker) still ended: it counts.
        return sum(1 for o in self.outcomes if o.done() and (o.cancelled() or o.exception() or o.result()))

    async def room_for_another(self) -> bool:
        if self.max_jobs is None:
            return True
        while True:
            pending = [o for o in self.outcomes if not o.done()]
            if self._counted() + len(pending) < self.max_jobs:
                return True
            if not pending:
                return False
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


class Worker:
    def __init__(self, store: JobStore, settings: Settings, name: str, models: ModelCache | None = None):
        self.store = store
        self.settings = settings
        self.name = name
        self.models = models or ModelCache(settings)
        self.stopping = threading.Event()  # shutdown: finish the step, save, give the job back
        self.files = JobFiles(settings.data_dir)
        self.fault: str | None = None  # set by a job that hit a worker fault; cleared by the next good check
        self.reported: str | None = None  # the problem last logged, so a lasting one is logged once
        self.checked_at = -float("inf")  # when the device and the weights were last found in place
        self.warmed = not settings.engine_warm_up  # warmed up: compiled and tuned, ready for the first claim
        self.warm_up_report: str | None = None  # what the warm-up took and whether the compile cache was hit
        self.finishing: set[asyncio.Task] = set()  # rendered jobs getting their upload copies, off the GPU's path
        self.gpu = threading.Lock()  # held by the job doing GPU work (engine/gpu_turn.py)
        self.past_the_gpu: set[asyncio.Future] = set()  # renders writing their last output, the GPU given up
        self.described: tuple | None = None  # (host, GPU, plan) last told to the store
        self.outage = StoreOutage(name)  # the queue's database briefly away: ridden out, logged once
        from engine.warmup import use_compile_cache

        use_compile_cache(settings.compile_cache_dir)  # before anything compiles: kernels kept across restarts

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping after the current step", self.name)
        self.stopping.set()

    async def run(self, max_jobs: int | None = None) -> None:
        try:
            await self._claim_and_render(max_jobs)
        finally:  # the last renders' upload copies and completions, before the worker goes
            await self.finish_pending()
        log.info("%s: stopped", self.name)

    async def finish_pending(self) -> None:
        while self.finishing:
            await asyncio.gather(*list(self.finishing), return_exceptions=True)

    async def _claim_and_render(self, max_jobs: int | None) -> None:
        outcomes = JobOutcomes(max_jobs)
        pause = NOT_READY_PAUSE_FIRST
        log.info("%s: waiting for jobs", self.name)
        while not self.stopping.is_set() and await outcomes.room_for_another():
            problem = await self.readiness()
            if problem is None and not self.warmed:
                problem = await self.warm_up()
                if self.stopping.is_set():
                    break
            await self.outage.attempt(self.store.heartbeat(self.name, problem))
            if problem is not None:
                await self._pause(pause)
                pause = min(pause * 2, NOT_READY_PAUSE_MAX)
                continue
            await self._describe()
            job = await self.outage.attempt(self.store.claim(self.name))
            if self.outage.ongoing:  # not this worker's fault: a short, steady retry, so it resumes soon after
                await self._pause(OUTAGE_RETRY_SECONDS)
                continue
            if job is None:  # PostgreSQL wakes this at once when a job is queued; SQLite polls
                await wait_for_work(self.store, IDLE_POLL_SECONDS)
                continue
            outcome = await self.process(job)
            outcomes.add(outcome)
            if not outcome.done() or outcome.result():
                pause = NOT_READY_PAUSE_FIRST  # a fault that comes back keeps growing the pause
            await self._describe()  # the first job's models bring the GPU and the plan

    async def _describe(self) -> None:
        """Host, GPU and memory plan for /admin workers, told again when they change (the plan comes with the
        first job's models)."""
        device = self.models.device
        gpu = None if device is None else _device_name(device)
        about = (socket.gethostname(), gpu, self.models.plan.name if self.models.plan else None)
        if about != self.described:
            await self.outage.attempt(self.store.describe_worker(self.name, *about))
            if not self.outage.ongoing:
                self.described = about

    async def readiness(self) -> str | None:
        """None when this worker can render, else why not (logged when it changes)."""
        problem = self.fault
        if problem is None and free_disk_bytes(self.settings.data_dir) < MIN_FREE_DISK_BYTES:
            problem = f"The data folder's disk has less than {MIN_FREE_DISK_BYTES // 2**20} MB free."
        now = time.monotonic()
        if problem is None and (self.reported is not None or now - self.checked_at > READY_CHECK_SECONDS):
            variants = (await self.store.get_limits()).allowed_variants
            try:
                await asyncio.to_thread(self.models.check, variants)
                self.checked_at = now
            except WorkerFault as fault:
                problem = str(fault)
        if problem != self.reported:
            if problem is None:
                log.info("%s: ready to render", self.name)
            else:
                log.error("%s: cannot render: %s (jobs wait; trying again with a growing pause)", self.name, problem)
            self.reported = problem
        return problem

    async def warm_up(self) -> str | None:
        """Load, compile and tune on a throw-away render before the first claim; None when done, else the
        start-up failure (reported like any reason this worker cannot render: no job is at fault). Queued
        jobs show that a worker is starting up meanwhile."""
        from engine.render import Cancelled
        from engine.warmup import warm_up

        variants = (await self.store.get_limits()).allowed_variants
        variant = "original" if "original" in variants else variants[0]
        log.info("%s: warming up (%s variant) before the first job", self.name, variant)

        def work():
            try:
                models = self.models.get(variant)
            except Exception as error:
                raise WorkerFault(f"Loading the {variant} models failed: {type(error).__name__}: {error}") from None
            return warm_up(models, self.settings.render_resolution, self.settings.data_dir / "cache" / "warm-up",
                           should_cancel=self.stopping.is_set)

        warming = asyncio.get_running_loop().run_in_executor(None, work)
        while not warming.done():  # alive and starting, heartbeat after heartbeat, however long loading takes
            await self.outage.attempt(self.store.heartbeat(self.name, None, starting=True))
            await asyncio.wait([warming], timeout=max(self.settings.lease_seconds / 4, 0.05))
        try:
            done = warming.result()
        except Cancelled:
            return None  # a stop request during the warm-up
        except WorkerFault as fault:
            log.error("%s: warm-up failed: %s", self.name, fault)
            return str(fault)
        except Exception as error:
            log.exception("%s: warm-up failed", self.name)
            return f"Starting up failed: {type(error).__name__}: {error}"
        self.warmed = True
        self.warm_up_report = done.describe(self.settings.compile_cache_dir if self.settings.engine_compile else None)
        log.info("%s: %s", self.name, self.warm_up_report)
        return None

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on a stop request; a fault is checked afresh after the pause."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.stopping.is_set() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(min(0.5, seconds))
        self.fault = None

    async def _watch(self, job: Job, run: JobRun, work: asyncio.Future, cancels: bool) -> None:
        """Renew the lease until `work` ends; with `cancels`, also poll for a cancel and stop the render when
        the lease is lost (the upload copies of a finished render just go on)."""
        renew_every = max(self.settings.lease_seconds / 4, 0.05)
        poll_every = min(CANCEL_POLL_SECONDS, renew_every) if cancels else renew_every
        since_renew = 0.0
        while not work.done():
            await asyncio.sleep(poll_every)
            since_renew += poll_every
            if since_renew >= renew_every and not work.done():
                # None: the database is away; tried again at the next poll, the lease outlives a short outage.
                renewed = await self.outage.attempt(self.store.renew(job.id, self.name, lease=job.lease))
                if renewed is not None:
                    since_renew = 0.0
                if renewed is False:
                    log.warning("%s: lost the lease on job %d%s", self.name, job.id, "; stopping it" * cancels)
                    run.lease_lost = True
                    run.cancel.set()
                    if not cancels:
                        return
            if cancels and await self.outage.attempt(self.store.is_cancel_requested(job.id), default=False):
                run.cancel.set()

    @contextlib.asynccontextmanager
    async def _watching(self, job: Job, run: JobRun, work: asyncio.Future, cancels: bool = True):
        """The lease kept (see _watch) while the body awaits `work`."""
        watcher = asyncio.ensure_future(self._watch(job, run, work, cancels))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def process(self, job: Job) -> asyncio.Future[bool]:
        """Render one claimed job until it gives up the GPU; the job's outcome follows: False when it went back
        to the queue for a worker fault (its last output may still be written when this returns)."""
        from engine.extend_job import run_extension
        from engine.made_with import made_with
        from engine.render import Callbacks, Cancelled, Paused, RenderRequest, render
        from storage.lora_catalog import render_loras
        from storage.uploaded_videos import VideoLimits

        loop = asyncio.get_running_loop()
        run = JobRun()
        p = job.params
        log.info("%s: job %d: %s, %g s, %s, %d steps, seed %d%s", self.name, job.id, p.variant, p.seconds,
                 f"{p.resolution}px", p.steps, p.seed, f", extending {job.extends}" if job.extends else "")

        def report(progress: Progress) -> None:
            writing = self.store.report_progress(job.id, self.name, progress, lease=job.lease)
            asyncio.run_coroutine_threadsafe(writing, loop)

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
            try:
                models = self.models.get(p.variant)
            except Exception as error:  # missing or damaged weights, no device, no memory: not the job's fault
                raise WorkerFault(f"Loading the {p.variant} models failed: {type(error).__name__}: {error}") from None
            request = RenderRequest(prompt=job.prompt, seconds=p.seconds, variant=p.variant, seed=p.seed,
                                    steps=p.steps, resolution=p.resolution, crf=self.settings.video_crf,
                                    teacache=p.teacache or self.settings.engine_teacache, cfg=p.cfg,
                                    cfg_rescale=p.cfg_rescale, negative_prompt=p.negative_prompt,
                                    end_strength=p.end_strength, loop=p.loop,
                                    loras=render_loras(p.loras, self.settings.lora_dir))  # hashes checked there
            callbacks = Callbacks(on_step, on_section, run.cancel.is_set, self.stopping.is_set)
            if job.extends is not None:  # the same callbacks, checkpoints and finishing as a render
                return run_extension(models, self.files, job, request, callbacks,
                                     VideoLimits.from_settings(self.settings))
            image, end_image, keyframes = self._pictures(job)
            video = self.files.video_path(job.id)
            render(models, image, request, self.files.work_dir(job.id), video, on_step=on_step,
                   on_section=on_section, should_cancel=run.cancel.is_set, should_pause=self.stopping.is_set,
                   end_image=end_image, keyframes=keyframes, gpu_turn=turn)
            return video, made_with(request, end_picture=end_image is not None, keyframes=job.guides.keyframes,
                                    job_id=job.id, platform=job.platform)

        gpu_free = asyncio.Event()
        turn = GpuTurn(self.gpu, on_release=lambda: loop.call_soon_threadsafe(gpu_free.set))

        def work_in_turn():
            with turn:
                # Claimed while the last job still held the GPU or its transformer: a cancel or a stop that
                # came meanwhile drops the job here, before any model is loaded or moved for it.
                if run.cancel.is_set():
                    raise Cancelled()
                if self.stopping.is_set():
                    raise Paused()
                return work()

        async def wait_then_render():
            await self._models_free_for(p.variant)
            return await loop.run_in_executor(None, work_in_turn)

        rendering = asyncio.ensure_future(wait_then_render())  # watched (lease, cancel) from the claim on
        seeing = asyncio.ensure_future(self._see_through(job, run, rendering))
        freed = asyncio.ensure_future(gpu_free.wait())
        await asyncio.wait([seeing, freed], return_when=asyncio.FIRST_COMPLETED)
        freed.cancel()
        if seeing.done():
            return seeing
        # The last section's segment, the join and the copies go on while the next job renders.
        for pending, kept in ((seeing, self.finishing), (rendering, self.past_the_gpu)):
            kept.add(pending)
            pending.add_done_callback(kept.discard)
        seeing.add_done_callback(functools.partial(self._log_crash, job.id))
        return seeing

    def _log_crash(self, job_id: int, task: asyncio.Task) -> None:
        """What would have ended the claim loop, had the job not gone on beside the next one."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: finishing job %d failed", self.name, job_id, exc_info=task.exception())

    async def _models_free_for(self, variant) -> None:
        """A job of the other variant swaps the transformer: first let the renders still writing their
        output drop theirs (one 13B transformer in memory at a time)."""
        from engine.sections import Variant

        loaded = self.models.transformers
        if loaded and Variant.parse(variant) not in loaded and self.past_the_gpu:
            await asyncio.wait(list(self.past_the_gpu))

    async def _see_through(self, job: Job, run: JobRun, rendering: asyncio.Future) -> bool:
        """The render's end (the lease kept until then) and what follows it: completion, upload copies, or
        the job put where it belongs; False when it went back to the queue for a worker fault."""
        try:
            async with self._watching(job, run, rendering):
                video, how = await rendering
        except Exception as error:
            return await self._render_ended(job, run, error)
        if run.cancel.is_set():  # cancelled after the last step: no upload copies, the store ends it cancelled
            await self._last_word(self.store.complete, job, str(video), {})
            await self._record_speed(job, run)
            return True
        # The upload copies (ffmpeg) and the completion go on while the next job samples.
        finishing = asyncio.ensure_future(self._finish(job, run, video, how))
        self.finishing.add(finishing)
        finishing.add_done_callback(self.finishing.discard)
        return True

    async def _render_ended(self, job: Job, run: JobRun, error: BaseException) -> bool:
        """A render or its finishing that ended without a video: put the job where it belongs; False when it
        went back to the queue for a worker fault."""
        from engine.render import Cancelled, Paused
        from storage.inputs import InputError

        if isinstance(error, Paused):
            await self._last_word(self.store.release, job)
            log.info("%s: job %d given back to the queue at its last step", self.name, job.id)
            return True
        if isinstance(error, Cancelled):
            if not run.lease_lost:  # else another worker owns it now
                await self._last_word(self.store.mark_cancelled, job)
                log.info("%s: job %d cancelled", self.name, job.id)
            return True
        if isinstance(error, InputError):  # written for the person
            await self._last_word(self.store.fail, job, str(error))
            return True
        if isinstance(error, WorkerFault):
            return await self._give_back(job, str(error))
        if disk_trouble(error, self.settings.data_dir):  # passing: the job resumes from its checkpoint later
            log.error("%s: job %d paused, the disk is full: %s", self.name, job.id, error)
            return await self._give_back(job, "The data folder's disk is full.")
        # The job fails, the worker lives on for the next one. The person reads a plain sentence; the details
        # (paths, ffmpeg's command line) stay in this log.
        log.error("%s: job %d failed", self.name, job.id, exc_info=error)
        await self._last_word(self.store.fail, job, FAILED_TEXT)
        return True

    async def _finish(self, job: Job, run: JobRun, video: Path, how) -> None:
        """Stamp the video with its settings, make the upload copies, complete the job and record the speed;
        the lease is renewed meanwhile (a cancel now comes too late: the video is made)."""
        from engine.made_with import stamp
        from engine.video import fit_to_size

        def copies():
            # The settings go into the video before the copies are made (a copy keeps them), and each copy is
            # checked after, so every file a person gets says how it was made.
            stamp(video, how)
            fitted = {}
            for limit in job.params.upload_limits:
                copy = fit_to_size(video, self.files.fitted_path(job.id, limit), limit)
                fitted[limit] = str(stamp(copy, how, max_bytes=limit))
            return fitted

        making = asyncio.get_running_loop().run_in_executor(None, copies)
        try:
            async with self._watching(job, run, making, cancels=False):
                fitted = await making
        except Exception as error:
            await self._render_ended(job, run, error)
            return
        await self._last_word(self.store.complete, job, str(video), fitted)
        await self._record_speed(job, run)

    async def _last_word(self, tell, job: Job, *args):
        """A job's end told to the queue (`tell`: complete, fail, mark_cancelled, release), tried again through a
        short outage of its database: for a lease's length, after which another worker may own the job anyway."""
        return await self.outage.persist(lambda: tell(job.id, self.name, *args, lease=job.lease),
                                         self.settings.lease_seconds)

    async def _record_speed(self, job: Job, run: JobRun) -> None:
        if not run.step_seconds:
            return
        p = job.params
        overhead = statistics.median(run.section_overheads) if run.section_overheads else 0.0
        # TeaCache skips the transformer on some steps: the mean is its speed, a median would pick a skipped or
        # a full step. Only the job's own threshold counts as TeaCache here; the worker's ENGINE_TEACACHE is part
        # of its plain figure.
        teacache = p.teacache > 0
        step = statistics.fmean(run.step_seconds) if teacache else statistics.median(run.step_seconds)
        step /= CFG_FACTOR if p.cfg > 1 else 1.0  # the plain figure: the ETA doubles it again for CFG jobs
        await self.outage.attempt(self.store.record_speed(self.name, step, overhead, teacache=teacache))

    def _pictures(self, job: Job):
        """The start picture, the end picture (or None) and (seconds, picture) keyframes, as the store kept them."""
        from storage.inputs import load_image

        def load(path: Path):
            return load_image(path, max_pixels=10**9)

        end = load(self.files.end_path(job.id)) if job.guides.end else None
        keyframes = [(at, load(self.files.keyframe_path(job.id, index)))
                     for index, at in enumerate(job.guides.keyframes)]
        return load(self.files.input_path(job.id)), end, keyframes

    async def _give_back(self, job: Job, problem: str) -> bool:
        """A worker fault: the job waits in the queue (the attempt does not count), this worker pauses."""
        await self._last_word(self.store.release, job)
        log.warning("%s: job %d given back to the queue: %s", self.name, job.id, problem)
        self.fault = problem
        return False


async def main_async(name: str, max_jobs: int | None) -> int:
    from storage.sqlite_store import StorageNotWritable

    settings = get_settings()
    try:
        store = await open_store(settings)
    except StorageNotWritable as error:
        log.error("%s: cannot start: %s", name, error)
        return EXIT_CANNOT_START
    worker = Worker(store, settings, name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run(max_jobs)
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(settings, fmt=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return asyncio.run(main_async(args.name, args.max_jobs))


if __name__ == "__main__":
    sys.exit(main())

