"""One video from one image and one prompt: the FramePack section loop with checkpoints and previews.

Everything a job needs lives in its work folder:

    input.png           the picture cropped to its bucket
    conditioning.pt     prompt and image embeddings and the start latent (computed once)
    checkpoint.pt       after every section: history latents, sections done, generator state
    latents_NNNN.pt     each section's new latents and the generator after its draw
    segment_NNNN.mp4    finished frames, encoded as soon as they are final
    section_NNNN.gif    a small preview of each finished section

A run that finds a checkpoint of the same request in its folder resumes from it and produces the
same video as an uninterrupted run. Before the segments are joined (and on a resume) each one's frame
count is checked against the record; a missing or damaged segment sends the render back to the
section that wrote it, rebuilt from the saved latents, so the video is never short.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import continuation, direction
from engine import sections as sec
from engine.direction import Guides, SectionPrompt
from engine.gpu_turn import GpuTurn
from engine.image_input import prepare_image, resize_and_center_crop, scaled_buckets
from engine.lora import LoraChoice, choices_problem, use_loras
from engine.models import FramePackModels
from engine.preview import latent_preview, section_gif
from engine.section_sampler import JobConditioning, SectionSampler, encode_conditioning
from engine.stitch import OverlapStitcher, vae_decode
from engine.unipc import Cancelled, Paused
from engine.video import concat_segments, count_frames, frames_to_uint8, write_segment
from storage.inputs import InputError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
MAX_SECONDS = 120.0
MAX_STEPS = 100
MAX_CFG = 32.0  # the official demo's slider
REDO_ROUNDS = 3  # segments that keep going bad after this many re-renders point at the disk: give up

__all__ = ["Cancelled", "Paused", "RenderRequest", "StepEvent", "SectionEvent", "RenderResult", "render"]


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    seconds: float = 5.0
    variant: sec.Variant = sec.Variant.ORIGINAL
    seed: int = 31337
    steps: int = 25
    window: int = 9
    distilled_guidance: float = 10.0
    cfg: float = 1.0
    cfg_rescale: float = 0.0
    negative_prompt: str = ""
    crf: int = 16
    resolution: int = 640
    teacache: float = 0.0  # TeaCache threshold (SPEC.md section 8); 0 is off, 0.15 the demos' default
    end_strength: float = 1.0  # how strongly an end picture pulls (its latent is scaled by this)
    loop: bool = False  # the end picture is the start picture: a seamless loop
    loras: tuple[LoraChoice, ...] = ()  # up to 3 LoRAs (file, sha256, strength), put on at the job's start

    def __post_init__(self):
        object.__setattr__(self, "loras", tuple(LoraChoice.of(lora) for lora in self.loras))  # dicts from asdict/JSON

    def checked(self, max_prompt_chars: int = 1000, max_seconds: float = MAX_SECONDS) -> RenderRequest:
        """This request with its variant parsed, or an InputError that says what is wrong."""
        try:
            variant = sec.Variant.parse(self.variant)
        except ValueError as error:
            raise InputError(str(error)) from None
        if len(self.prompt) > max_prompt_chars:
            raise InputError(f"The prompt is {len(self.prompt)} characters; the limit is {max_prompt_chars}.")
        if len(self.negative_prompt) > max_prompt_chars:
            raise InputError(f"The negative prompt is longer than {max_prompt_chars} characters.")
        limit = min(max_seconds, MAX_SECONDS)
        if not 1.0 <= self.seconds <= limit:
            raise InputError(f"The duration must be between 1 and {limit:g} seconds, not {self.seconds:g}.")
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"Steps must be between 1 and {MAX_STEPS}, not {self.steps}.")
        if not 1 <= self.window <= 33:
            raise InputError(f"The latent window must be between 1 and 33, not {self.window}.")
        if not 0 <= self.crf <= 51:
            raise InputError(f"CRF must be between 0 and 51, not {self.crf}.")
        if not 0 <= self.seed < 2**63:
            raise InputError("The seed must be a non-negative 63-bit integer.")
        if not 0.0 <= self.teacache <= 1.0:
            raise InputError(f"The TeaCache threshold must be between 0 and 1, not {self.teacache:g}.")
        if not 1.0 <= self.cfg <= MAX_CFG:
            raise InputError(f"CFG must be between 1 (off) and {MAX_CFG:g}, not {self.cfg:g}.")
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise InputError(f"The CFG rescale must be between 0 and 1, not {self.cfg_rescale:g}.")
        if not 0.0 < self.end_strength <= 1.0:
            raise InputError(f"The end frame strength must be above 0 and at most 1, not {self.end_strength:g}.")
        if self.loop and variant is not sec.Variant.ORIGINAL:
            raise InputError(direction.ORIGINAL_ONLY.format(what="A loop"))
        if choices_problem(self.loras):
            raise InputError(choices_problem(self.loras))
        request = RenderRequest(**{**asdict(self), "variant": variant})
        request.timed_prompts()  # refuses a bad schedule here, before anything is made
        return request

    def timed_prompts(self) -> list[SectionPrompt] | None:
        """Each section's prompt in generation order, or None for a plain prompt."""
        timed = direction.parse_timed_prompt(self.prompt, self.seconds)
        if timed is None:
            return None
        return direction.section_prompts(timed, self.sections, self.window, sec.Variant.parse(self.variant))

    @property
    def sections(self) -> int:
        return sec.section_count(self.seconds, self.window)

    @property
    def frames(self) -> int:
        return sec.total_frames(self.sections, self.window)


@dataclass
class StepEvent:
    section: int  # 1-based, in generation order
    sections: int
    step: int  # 1-based
    steps: int
    x0: torch.Tensor = field(repr=False)
    seconds_per_step: float

    def preview(self) -> np.ndarray:
        """The step's x0 as an RGB strip, one small frame per latent."""
        return latent_preview(self.x0)


@dataclass
class SectionEvent:
    section: int
    sections: int
    gif: Path
    frames_done: int
    frames_total: int
    sample_seconds: float  # the denoising steps
    decode_seconds: float  # VAE decode and blend
    output_seconds: float  # video segment, preview GIF, checkpoint (on the output thread, beside the next section)
    blocked_seconds: float = 0.0  # how long the section loop waited for earlier sections' output


@dataclass
class RenderResult:
    video: Path
    frames: int
    width: int
    height: int
    seconds: float
    resumed_from_section: int


_OFF = {"teacache": 0.0, "end_strength": 1.0, "loop": False, "loras": ()}


def _fingerprint(request: RenderRequest, image: np.ndarray, guides: Guides) -> str:
    """What the job's saved state depends on: the request, the cropped pictures and the prompt schedule."""
    options = {name: value for name, value in asdict(request).items() if _OFF.get(name, ...) != value}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())  # options off: as before
    for picture in [image, *([guides.end] if guides.end is not None else [])]:
        digest.update(picture.tobytes())
        digest.update(str(picture.shape).encode())
    for index, picture in sorted(guides.keyframes.items()):
        digest.update(f"keyframe {index} {picture.shape}".encode())
        digest.update(picture.tobytes())
    if guides.prompts is not None:
        digest.update(json.dumps([asdict(p) for p in guides.prompts]).encode())
    return digest.hexdigest()


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_if_matching(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a torn or foreign file: start that part over
        log.warning("ignoring unreadable %s: %s", path, error)
        return None
    if not isinstance(data, dict):  # a valid pickle of something else: as good as a torn file
        log.warning("ignoring %s: it holds a %s, not a checkpoint", path, type(data).__name__)
        return None
    if data.get("fingerprint") != fingerprint or data.get("version") != CHECKPOINT_VERSION:
        return None
    return data


class StepReporter:
    """Turns the sampler's per-step callback into StepEvents with the time each step took."""

    def __init__(self, on_step: Callable[[StepEvent], None] | None, section: int, sections: int, steps: int):
        self.on_step, self.section, self.sections, self.steps = on_step, section, sections, steps
        self.clock = time.perf_counter()

    def __call__(self, index: int, x0: torch.Tensor) -> None:
        now = time.perf_counter()
        elapsed, self.clock = now - self.clock, now
        if self.on_step is not None:
            self.on_step(StepEvent(self.section, self.sections, index + 1, self.steps, x0, elapsed))


class _OutputStage:
    """A finished section's video segment, preview GIF and checkpoint are written on one thread, in order,
    while the GPU samples the next section (on an H100 that writing is 2-4 s of a 22-28 s section).

    At most one section waits behind the one being written, so frames do not pile up when writing is the
    slower side; a write that failed raises at the next `make_room` or `drain`.
    """

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="framepack-output")
        self._pending: list[Future] = []

    def _wait_until(self, pending: int) -> None:
        while len(self._pending) > pending:
            self._pending.pop(0).result()

    def make_room(self) -> float:
        """Wait until at most one section is pending; returns the seconds waited."""
        start = time.perf_counter()
        self._wait_until(1)
        return time.perf_counter() - start

    def submit(self, write: Callable[[], None]) -> None:
        self._pending.append(self._pool.submit(write))

    def drain(self) -> None:
        """Everything submitted is on disk (the checkpoint included) or its error is raised."""
        self._wait_until(0)

    def close(self, quiet: bool = False) -> None:
        try:
            self.drain()
        except Exception:
            if not quiet:
                raise
            log.exception("writing a section's output failed")
        finally:
            self._pool.shutdown(wait=True)


class _Checkpoint:
    """Sections done, the bounded history, the noise generator and the segments written so far."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        return load_if_matching(self.path, self.fingerprint)

    def save(self, done: int, history: torch.Tensor, generator_state: torch.Tensor, segments: dict[int, int],
             partial: dict | None = None):
        """`partial`: a section stopped between steps (its noise already drawn, the sampler's tensors)."""
        save_atomic(
            {
                "version": CHECKPOINT_VERSION,
                "fingerprint": self.fingerprint,
                "sections_done": done,
                "history": history.clone(),
                "generator_state": generator_state,
                "segments": dict(segments),
                "partial": partial,
            },
            self.path,
        )


@dataclass
class _Job:
    """One job's fixed parts: what it asks for, where it lives and what was computed once for it."""

    models: FramePackModels
    request: RenderRequest
    work_dir: Path
    conditioning: JobConditioning
    checkpoint: _Checkpoint
    saved_sections: _SavedSections
    width: int
    height: int


@dataclass(frozen=True)
class Callbacks:
    on_step: Callable[[StepEvent], None] | None = None
    on_section: Callable[[SectionEvent], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    should_pause: Callable[[], bool] | None = None
    gpu_turn: GpuTurn | None = None  # given up after the last decode (engine/gpu_turn.py)


def render(
    models: FramePackModels,
    image: Image.Image,
    request: RenderRequest,
    work_dir: Path,
    out_path: Path,
    on_step: Callable[[StepEvent], None] | None = None,
    on_section: Callable[[SectionEvent], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    should_pause: Callable[[], bool] | None = None,
    end_image: Image.Image | None = None,
    keyframes: Sequence[tuple[float, Image.Image]] = (),
    gpu_turn: GpuTurn | None = None,
) -> RenderResult:
    """Render `request` into `out_path`; resumable through `work_dir`.

    `end_image` is the last frame to head for and `keyframes` (seconds, picture) pairs to pass through,
    both for the original variant. Raises Cancelled when `should_cancel` turns true (within one step), and
    Paused when `should_pause` does, after saving the step it stopped at, so that the next run continues
    from that very step. `gpu_turn`, held by the caller, is released once the last section is decoded.
    """
    # 1. Check the inputs, crop the pictures and put the request's LoRAs on the transformer in place of the last
    #    job's: a request that cannot run creates nothing.
    request = request.checked(max_prompt_chars=10**6)
    if request.variant is not models.variant:
        raise ValueError(f"The loaded transformer is the {models.variant.value} variant, not {request.variant.value}.")
    start, guides = _crop_pictures(image, end_image, keyframes, request)
    use_loras(models.transformer, request.loras, models.device)

    # 2. The conditioning of every section, computed once and kept in the work folder.
    job = _prepare_job(models, request, start, guides, Path(work_dir))

    # 3. The section loop, from the last checkpoint of this very request (its segments checked).
    loop = _SectionLoop(job, Callbacks(on_step, on_section, should_cancel, should_pause, gpu_turn))
    loop.run()

    # 4. The finished segments, joined into one MP4 of the frames the request asks for.
    result = _join_segments(job, loop.segments, Path(out_path), loop.resumed_from)

    # 5. What an F1 continuation of this video needs (engine/continuation.py), kept beside the segments.
    _keep_continuation(job, loop)
    return result


def _keep_continuation(job: _Job, loop: _SectionLoop) -> None:
    request, sampler = job.request, loop.sampler
    generated = []
    if request.variant is sec.Variant.ORIGINAL:  # its history is the video's beginning: rebuild the end
        saved = [job.saved_sections.load(index) for index in range(request.sections)]
        if any(section is None for section in saved):
            log.warning("a section's latents are gone from %s: this video cannot be extended", job.work_dir)
            return
        generated = [section["generated"] for section in saved]
    edge = None
    if request.variant is sec.Variant.F1:
        edge = continuation.f1_edge_count(request.sections, request.window)
    continuation.save(job.work_dir, continuation.Continuation(
        history=continuation.time_ordered_tail(request.variant, sampler.history, generated,
                                               job.conditioning.start_latent, request.window),
        start_latent=job.conditioning.start_latent, image_tokens=job.conditioning.positive.image,
        seed=request.seed, generator_state=sampler.generator.get_state(),
        segments=[(f"segment_{rank:04d}.mp4", frames) for rank, frames in sorted(loop.segments.items())],
        edge_count=edge, width=job.width, height=job.height, window=request.window, prompt=request.prompt))


def check_guides(request: RenderRequest, has_end: bool, keyframe_times: Sequence[float]) -> list[int]:
    """An InputError for an end picture or keyframes this request cannot take; else the generation index of
    each keyframe's section, in time order. `request` is a checked one."""
    if has_end and request.loop:
        raise InputError("A loop ends on its own start picture: leave out the end picture, or the loop.")
    if has_end and request.variant is not sec.Variant.ORIGINAL:
        raise InputError(direction.ORIGINAL_ONLY.format(what="An end frame"))
    return direction.keyframe_sections(sorted(keyframe_times), request.seconds, request.window, request.variant)


def _crop_pictures(image: Image.Image, end_image: Image.Image | None,
                   keyframes: Sequence[tuple[float, Image.Image]], request: RenderRequest) -> tuple[np.ndarray, Guides]:
    """The start picture cropped to its bucket, and the guides: the end picture and keyframes cropped to that
    same bucket (so their latents line up with the start's), and the timed prompts per section."""
    in_order = sorted(keyframes, key=lambda pair: pair[0])
    indices = check_guides(request, end_image is not None, [time for time, _ in in_order])
    for _, picture in [*in_order, *([(0, end_image)] if end_image is not None else [])]:
        if not isinstance(picture, Image.Image):
            raise InputError("An end frame or keyframe must be a picture.")
    start = prepare_image(image, scaled_buckets(request.resolution))
    height, width = start.shape[:2]

    def crop(picture: Image.Image) -> np.ndarray:
        return resize_and_center_crop(np.asarray(picture.convert("RGB")), width, height)

    end = start if request.loop else crop(end_image) if end_image is not None else None
    pinned = {index: crop(picture) for index, (_, picture) in zip(indices, in_order, strict=True)}
    return start, Guides(end, pinned, request.timed_prompts())


def _prepare_job(models: FramePackModels, request: RenderRequest, start: np.ndarray, guides: Guides,
                 work_dir: Path) -> _Job:
    """The work folder with the pictures as cropped, and the conditioning (encoded, or loaded from it)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(start).save(work_dir / "input.png")
    if guides.end is not None:
        Image.fromarray(guides.end).save(work_dir / "end.png")
    for index, picture in guides.keyframes.items():
        Image.fromarray(picture).save(work_dir / f"keyframe_{index + 1:04d}.png")
    fingerprint = _fingerprint(request, start, guides)
    conditioning = _load_or_encode_conditioning(models, start, guides, request, work_dir / "conditioning.pt",
                                                fingerprint)
    height, width = start.shape[:2]
    return _Job(models, request, work_dir, conditioning, _Checkpoint(work_dir / "checkpoint.pt", fingerprint),
                _SavedSections(work_dir, fingerprint), width, height)


class _SectionLoop:
    """Samples, decodes and blends the sections in generation order; the output thread writes each finished
    one (segment, latents, preview, checkpoint) while the next samples. A segment that does not check out
    at the end sends the loop back to the section that wrote it."""

    def __init__(self, job: _Job, callbacks: Callbacks):
        self.job, self.request, self.callbacks = job, job.request, callbacks
        self.done, self.segments, self.partial, self.sampler = _start_point(
            job.models, job.request, job.conditioning, job.checkpoint, job.saved_sections)
        self.resumed_from = self.done
        self.frames_done = sum(int(n) for n in self.segments.values())

    def run(self) -> None:
        job = self.job
        for _ in range(REDO_ROUNDS):
            self._run_from(self.done)
            redo = _first_section_to_redo(job.work_dir, self.segments, self.request, complete=True)
            if redo is None:
                return
            self._take_gpu_back()
            self.done, self.sampler = _rewind(job.models, self.request, job.conditioning, job.saved_sections, redo,
                                              self.segments)
            self.partial, self.frames_done = None, sum(self.segments.values())
        raise RuntimeError(f"The video's segments in {job.work_dir} went bad {REDO_ROUNDS} times over: check the disk.")

    def _run_from(self, first: int) -> None:
        models, sections = self.job.models, self.request.sections
        stitcher = OverlapStitcher(sec.overlap_frames(self.request.window),
                                   self.request.variant is sec.Variant.ORIGINAL, sections)
        if first > 0:
            with models.placement.vae():
                stitcher.restore(vae_decode(self.sampler.decode_window(first - 1), models.encoders.vae), first)
        output = _OutputStage()
        try:
            for index in range(first, sections):
                self._check_stop(output)
                self._section(index, stitcher, output)
            if self.callbacks.gpu_turn is not None:  # the rest is the output thread's: the next job may start
                self.callbacks.gpu_turn.release()
            output.drain()
        except BaseException:
            output.close(quiet=True)  # the first error is the one to report
            raise
        output.close()

    def _take_gpu_back(self) -> None:
        """Before rendering again after the turn was given up: wait for it, and put this job's LoRAs back
        (the job that had the GPU meanwhile may have put on others)."""
        turn = self.callbacks.gpu_turn
        if turn is not None and not turn.held:
            turn.take_back()
            use_loras(self.job.models.transformer, self.request.loras, self.job.models.device)

    def _check_stop(self, output: _OutputStage) -> None:
        callbacks = self.callbacks
        if callbacks.should_cancel is not None and callbacks.should_cancel():
            raise Cancelled()
        if callbacks.should_pause is not None and callbacks.should_pause():
            output.drain()
            raise Paused()  # the checkpoint of the last section is the place to resume from

    def _section(self, index: int, stitcher: OverlapStitcher, output: _OutputStage) -> None:
        """Sample section `index`, decode and blend it, and hand its output to the output thread."""
        models, sampler, callbacks = self.job.models, self.sampler, self.callbacks
        report_step = StepReporter(callbacks.on_step, index + 1, self.request.sections, self.request.steps)
        clock = time.perf_counter()
        try:
            generated = sampler.sample(index, report_step, callbacks.should_cancel, callbacks.should_pause,
                                       self.partial)
        except Paused as paused:
            output.drain()  # the earlier sections' checkpoints first, then this one
            self.job.checkpoint.save(index, sampler.history, paused.start_state, self.segments, paused.partial)
            log.info("paused at section %d, step %d", index + 1, paused.state["step"] + 1)
            raise
        self.partial = None
        sampled = time.perf_counter()
        with models.placement.vae():
            chunk = vae_decode(sampler.decode_window(index), models.encoders.vae)
        blocks = [stitcher.add(chunk)]
        if index == self.request.sections - 1:
            blocks.append(stitcher.finish())
        decoded = time.perf_counter()
        blocked = output.make_room()
        output.submit(functools.partial(
            self._finish_section, index, blocks, chunk, generated, sampler.history, sampler.generator.get_state(),
            sample_seconds=sampled - clock, decode_seconds=decoded - sampled, blocked_seconds=blocked,
        ))

    def _finish_section(self, index: int, blocks: list, chunk: torch.Tensor, generated: torch.Tensor,
                        history: torch.Tensor, generator_state, **timings: float) -> None:
        """On the output thread: the section's frames, latents, preview and checkpoint, then its event."""
        job, request = self.job, self.request
        start = time.perf_counter()
        # The segments (two for the last section) and the preview encode at once: the last section's are
        # the job's tail, which the person waits for. The checkpoint names the segments, so it comes after.
        with ThreadPoolExecutor(max_workers=len(blocks) + 1, thread_name_prefix="framepack-encode") as pool:
            writes = [pool.submit(self._write_block, rank, block) for rank, block in blocks]
            preview = pool.submit(section_gif, frames_to_uint8(chunk), job.work_dir / f"section_{index + 1:04d}.gif")
            job.saved_sections.save(index, generated, generator_state)
            self.frames_done += sum(write.result() for write in writes)
            gif = preview.result()
        job.checkpoint.save(index + 1, history, generator_state, self.segments)
        if self.callbacks.on_section is not None:
            self.callbacks.on_section(SectionEvent(index + 1, request.sections, gif, self.frames_done, request.frames,
                                                   output_seconds=time.perf_counter() - start, **timings))

    def _write_block(self, rank: int, block: torch.Tensor) -> int:
        if block.shape[1] == 0:
            return 0
        write_segment(self.job.work_dir / f"segment_{rank:04d}.mp4", frames_to_uint8(block), self.request.crf)
        self.segments[rank] = block.shape[1]
        return block.shape[1]


def _join_segments(job: _Job, segments: dict[int, int], out_path: Path, resumed_from: int) -> RenderResult:
    ordered = [job.work_dir / f"segment_{rank:04d}.mp4" for rank in sorted(segments)]
    concat_segments(ordered, out_path)
    frames = count_frames(out_path)
    if frames != job.request.frames:
        raise RuntimeError(f"The joined video has {frames} frames instead of {job.request.frames}.")
    return RenderResult(out_path, frames, job.width, job.height, frames / sec.FPS, resumed_from)


class _SavedSections:
    """Each finished section's latents and generator state, enough to rebuild the render at any section."""

    def __init__(self, work_dir: Path, fingerprint: str):
        self.work_dir, self.fingerprint = work_dir, fingerprint

    def _path(self, index: int) -> Path:
        return self.work_dir / f"latents_{index + 1:04d}.pt"

    def save(self, index: int, generated: torch.Tensor, generator_state: torch.Tensor) -> None:
        save_atomic({"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "generated": generated,
                      "generator_state": generator_state}, self._path(index))

    def load(self, index: int) -> dict | None:
        return load_if_matching(self._path(index), self.fingerprint)


def _producing_section(rank: int, sections: int, reverse: bool) -> int:
    """The section (0-based, generation order) whose blend wrote segment `rank`: the stitcher's ranks run
    down from `sections` (inverted sampler) or up from 0, and the last section also writes the far end."""
    if reverse:
        return sections - rank if rank > 0 else sections - 1
    return rank if rank < sections else sections - 1


def _first_section_to_redo(work_dir: Path, segments: dict[int, int], request: RenderRequest,
                           complete: bool = False) -> int | None:
    """The earliest section (generation order) that wrote a missing or damaged segment, or None. With
    `complete` (every section done) the segments must also add up to the request's frames."""
    reverse = request.variant is sec.Variant.ORIGINAL
    bad = [rank for rank, frames in segments.items() if count_frames(work_dir / f"segment_{rank:04d}.mp4") != frames]
    if not bad and (not complete or sum(segments.values()) == request.frames):
        return None
    if not bad:  # every file checks out but frames are missing: a record was lost, render it all again
        log.warning("the segments hold %d of %d frames; rendering again", sum(segments.values()), request.frames)
        return 0
    log.warning("segment(s) %s missing or damaged", ", ".join(str(r) for r in sorted(bad)))
    return min(_producing_section(rank, request.sections, reverse) for rank in bad)


def _rewind(models: FramePackModels, request: RenderRequest, conditioning: JobConditioning,
            saved_sections: _SavedSections, section: int, segments: dict[int, int]) -> tuple[int, SectionSampler]:
    """The render as it stood before `section`, rebuilt from the saved latents (from the start when one is
    missing); `segments` keeps only what earlier sections wrote."""
    sampler = SectionSampler(models, request, conditioning)
    for index in range(section):
        saved = saved_sections.load(index)
        if saved is None:
            log.warning("section %d's latents are gone: rendering from the start", index + 1)
            return _rewind(models, request, conditioning, saved_sections, 0, segments)
        sampler.add(index, saved["generated"])
        sampler.generator.set_state(saved["generator_state"])
    reverse = request.variant is sec.Variant.ORIGINAL
    for rank in [r for r in segments if _producing_section(r, request.sections, reverse) >= section]:
        del segments[rank]
    log.warning("rendering again from section %d of %d", section + 1, request.sections)
    return section, sampler


def _start_point(models: FramePackModels, request: RenderRequest, conditioning: JobConditioning,
                 checkpoint: _Checkpoint, saved_sections: _SavedSections):
    """(sections done, segments, partial section, sampler) to start from."""
    saved = checkpoint.load()
    if saved is None:
        return 0, {}, None, SectionSampler(models, request, conditioning)
    done, segments, partial = saved["sections_done"], dict(saved["segments"]), saved.get("partial")
    redo = _first_section_to_redo(checkpoint.path.parent, segments, request) if done else None
    if redo is not None and redo < done:
        done, sampler = _rewind(models, request, conditioning, saved_sections, redo, segments)
        return done, segments, None, sampler
    sampler = SectionSampler(models, request, conditioning, saved["history"], saved["generator_state"])
    log.info("resuming at section %d of %d%s", done + 1, request.sections,
             f", step {partial['sampler']['step'] + 1}" if partial else "")
    return done, segments, partial, sampler


def _load_or_encode_conditioning(models: FramePackModels, cropped: np.ndarray, guides: Guides,
                                 request: RenderRequest, path: Path, fingerprint: str) -> JobConditioning:
    names = [f.name for f in fields(JobConditioning)]
    saved = load_if_matching(path, fingerprint)
    if saved is not None:
        return JobConditioning(**{name: saved[name] for name in names if name in saved})
    conditioning = encode_conditioning(models, cropped, request, guides)
    save_atomic({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
                  **{name: getattr(conditioning, name) for name in names}}, path)
    return conditioning
