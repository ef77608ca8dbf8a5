"""Extend a finished video by N seconds with the F1 (forward) sampler; resumable through its work folder.

The extension's work folder holds, beside what engine/extend_source.py prepares (`source.pt`, `prefix.mp4`):

    checkpoint.pt       after every section: history, sections done, generator, segments (and a paused step)
    latents_NNNN.pt     each new section's latents
    segment_NNNN.mp4    the new frames; segment 0 starts with the blend into the source's last frames
    section_NNNN.gif    a preview of each new section
    continuation.pt     when done: what a further extension needs (engine/continuation.py)

What holds (tests/test_extend.py checks it): extending an F1 render of N sections from its kept latents, with
the same prompt, seed and sampling settings, by M sections gives exactly the render of N + M sections, latent
for latent and frame for frame. F1's section k reads only the start latent, the last 19 latents and the k-th
draw of the seed's generator, all of which the render kept; the first new decode blends into a fresh decode of
the very latents the render decoded last, as the longer render blends into its own. Another seed, prompt or
source (an uploaded video, an original-variant render) continues smoothly but matches no single render.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from engine import continuation
from engine import sections as sec
from engine.denoiser import Conditioning
from engine.extend_source import PREFIX_FILE, PreparedSource, prepare_source
from engine.lora import use_loras
from engine.models import FramePackModels
from engine.preview import section_gif
from engine.render import (  # the same checkpoint files and events
    Callbacks,
    Cancelled,
    Paused,
    RenderRequest,
    SectionEvent,
    StepEvent,
    StepReporter,
    load_if_matching,
    save_atomic,
)
from engine.section_sampler import JobConditioning, SectionSampler, encode_prompts
from engine.stitch import OverlapStitcher, vae_decode
from engine.uploaded_video import VideoLimits
from engine.video import FPS, concat_segments, count_frames, frames_to_uint8, write_segment
from storage.inputs import InputError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

__all__ = ["Cancelled", "Paused", "ExtendResult", "VideoLimits", "extend"]


@dataclass
class ExtendResult:
    video: Path
    frames: int
    width: int
    height: int
    seconds: float  # the whole joined video's
    source_frames: int
    resumed_from_section: int
    extends: dict  # what was extended, for the video's metadata (engine/made_with.py extension_made_with)


def extend(
    models: FramePackModels,
    source: Path,
    request: RenderRequest,
    work_dir: Path,
    out_path: Path,
    on_step: Callable[[StepEvent], None] | None = None,
    on_section: Callable[[SectionEvent], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    should_pause: Callable[[], bool] | None = None,
    limits: VideoLimits | None = None,
    source_name: str | None = None,
) -> ExtendResult:
    """Continue `source` by `request.seconds` with the F1 sampler and write the joined video to `out_path`.

    `source` is a work folder with `continuation.pt` (a finished render or extension: its kept latents) or a
    video file (MP4 or WebM within `limits`: its last frames are VAE-encoded). `request` is sampled as F1
    whatever its variant; a seed equal to the kept one carries on its noise stream. Bad input raises
    InputError and leaves nothing behind; Cancelled and Paused as render() does, resumable from `work_dir`.
    """
    # 1. Check the request: a plain prompt, the F1 sampler, nothing that only the original variant takes; its
    #    LoRAs on the transformer in place of the last job's.
    request = _checked(request)
    if models.variant is not sec.Variant.F1:
        raise ValueError(f"Extending needs the f1 transformer, not the {models.variant.value} one.")
    use_loras(models.transformer, request.loras, models.device)

    # 2. The source made ready in the work folder: its history, start latent, prefix frames and overlap.
    work_dir = Path(work_dir)
    prepared = prepare_source(models, Path(source), work_dir, request, limits or VideoLimits(), source_name)

    # 3. The continuation's prompt with the source's picture tokens.
    conditioning = _conditioning(models, request, prepared)

    # 4. The new sections, blended onto the source's last frames, checkpointed one by one.
    loop = _ExtensionLoop(models, request, prepared, conditioning, work_dir,
                          Callbacks(on_step, on_section, should_cancel, should_pause))
    loop.run()

    # 5. The source's frames and the new ones, joined without re-encoding either.
    result = _join(loop, Path(out_path))

    # 6. What a further extension needs.
    _keep_continuation(loop)
    return result


def _checked(request: RenderRequest) -> RenderRequest:
    request = replace(request, variant=sec.Variant.F1).checked(max_prompt_chars=10**6)
    if request.timed_prompts() is not None:
        raise InputError("An extension takes one plain prompt, not a timed one.")
    if request.loop or request.end_strength != 1.0:
        raise InputError("An extension cannot take an end picture or a loop.")
    return request


def _conditioning(models: FramePackModels, request: RenderRequest, source: PreparedSource) -> JobConditioning:
    prompts = [request.prompt, *([request.negative_prompt] if request.cfg != 1.0 else [])]
    encoded = encode_prompts(models, prompts)
    positive = Conditioning(*encoded[0], source.image_tokens)
    negative = Conditioning(*encoded[1], source.image_tokens) if len(encoded) > 1 else None
    return JobConditioning(positive, negative, source.start_latent)


def _fingerprint(request: RenderRequest, source: PreparedSource) -> str:
    settings = {name: value for name, value in asdict(request).items() if name != "loras" or value}  # none: as before
    options = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(f"{options} {source.fingerprint}".encode()).hexdigest()


class _ExtensionLoop:
    """Samples, decodes and blends the new sections in time order, writing each one's output at once."""

    def __init__(self, models: FramePackModels, request: RenderRequest, source: PreparedSource,
                 conditioning: JobConditioning, work_dir: Path, callbacks: Callbacks):
        self.models, self.request, self.source, self.work_dir = models, request, source, work_dir
        self.callbacks = callbacks
        self.overlap, self.window = sec.overlap_frames(request.window), request.window
        self.checkpoint_path = work_dir / "checkpoint.pt"
        self.fingerprint = _fingerprint(request, source)
        saved = self._load_checkpoint()
        if saved is None:
            continues = source.generator_state is not None and source.seed == request.seed
            self.done, self.segments, self.partial = 0, {}, None
            history, state = source.history.clone(), source.generator_state if continues else None
        else:
            self.done, self.segments, self.partial = saved["sections_done"], saved["segments"], saved["partial"]
            history, state = saved["history"], saved["generator_state"]
            log.info("resuming the extension at section %d of %d", self.done + 1, request.sections)
        self.resumed_from = self.done
        self.sampler = SectionSampler(models, request, conditioning, history, state)

    def run(self) -> None:
        stitcher = OverlapStitcher(self.overlap, reverse=False, sections=self.request.sections)
        with self.models.placement.vae():
            stitcher.restore(self._previous_chunk(), self.done)
        for index in range(self.done, self.request.sections):
            self._check_stop()
            self._section(index, stitcher)

    def _previous_chunk(self) -> torch.Tensor:
        """Frames whose end the next section's decode blends into: the source's last frames at first."""
        if self.done > 0:
            return vae_decode(self.decode_window(), self.models.encoders.vae)
        if self.source.edge_latents is not None:
            return vae_decode(self.source.edge_latents, self.models.encoders.vae)
        return self.source.edge_pixels.permute(3, 0, 1, 2).to(torch.float16).div(127.5).sub(1.0)

    def decode_window(self) -> torch.Tensor:
        # Every new section decodes as a later F1 section does: its L latents after the L before them.
        return self.sampler.history[:, :, -2 * self.window:]

    def _check_stop(self) -> None:
        if self.callbacks.should_cancel is not None and self.callbacks.should_cancel():
            raise Cancelled()
        if self.callbacks.should_pause is not None and self.callbacks.should_pause():
            raise Paused()

    def _section(self, index: int, stitcher: OverlapStitcher) -> None:
        request, sampler, callbacks = self.request, self.sampler, self.callbacks
        report = StepReporter(callbacks.on_step, index + 1, request.sections, request.steps)
        clock = time.perf_counter()
        try:
            generated = sampler.sample(index, report, callbacks.should_cancel, callbacks.should_pause, self.partial)
        except Paused as paused:
            self._save_checkpoint(index, sampler.history, paused.start_state, paused.partial)
            raise
        self.partial = None
        sampled = time.perf_counter()
        with self.models.placement.vae():
            chunk = vae_decode(self.decode_window(), self.models.encoders.vae)
        blocks = [stitcher.add(chunk)] + ([stitcher.finish()] if index == request.sections - 1 else [])
        decoded = time.perf_counter()
        for rank, block in blocks:
            write_segment(self.work_dir / f"segment_{rank:04d}.mp4", frames_to_uint8(block), request.crf)
            self.segments[rank] = block.shape[1]
        save_atomic({"generated": generated}, self.work_dir / f"latents_{index + 1:04d}.pt")
        gif = section_gif(frames_to_uint8(chunk), self.work_dir / f"section_{index + 1:04d}.gif")
        self._save_checkpoint(index + 1, sampler.history, sampler.generator.get_state(), None)
        if callbacks.on_section is not None:
            done = self.source.frames - self.overlap + sum(self.segments.values())
            callbacks.on_section(SectionEvent(index + 1, request.sections, gif, done, self.frames_total,
                                              sample_seconds=sampled - clock, decode_seconds=decoded - sampled,
                                              output_seconds=time.perf_counter() - decoded))

    @property
    def frames_total(self) -> int:
        return self.source.frames + 4 * self.window * self.request.sections

    def ordered_segments(self) -> list[tuple[str, int]]:
        prefix = [(PREFIX_FILE, self.source.prefix_frames)] if self.source.prefix_frames else []
        return prefix + [(f"segment_{rank:04d}.mp4", frames) for rank, frames in sorted(self.segments.items())]

    def _save_checkpoint(self, done: int, history: torch.Tensor, generator_state, partial: dict | None) -> None:
        save_atomic({"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "sections_done": done,
                      "history": history.clone(), "generator_state": generator_state,
                      "segments": dict(self.segments), "partial": partial}, self.checkpoint_path)

    def _load_checkpoint(self) -> dict | None:
        """The checkpoint of this very extension, if its segments all check out (else start over)."""
        saved = load_if_matching(self.checkpoint_path, self.fingerprint)
        if saved is None or saved.get("version") != CHECKPOINT_VERSION:
            return None
        for rank, frames in saved["segments"].items():
            if count_frames(self.work_dir / f"segment_{rank:04d}.mp4") != frames:
                log.warning("segment %d of the extension is missing or damaged: starting it over", rank)
                return None
        return saved


def _join(loop: _ExtensionLoop, out_path: Path) -> ExtendResult:
    source = loop.source
    concat_segments([loop.work_dir / name for name, _ in loop.ordered_segments()], out_path)
    frames = count_frames(out_path)
    if frames != loop.frames_total:
        raise RuntimeError(f"The joined video has {frames} frames instead of {loop.frames_total}.")
    return ExtendResult(out_path, frames, source.width, source.height, frames / FPS, source.frames,
                        loop.resumed_from, dict(source.description))


def _keep_continuation(loop: _ExtensionLoop) -> None:
    request, sampler = loop.request, loop.sampler
    continuation.save(loop.work_dir, continuation.Continuation(
        history=sampler.history[:, :, -continuation.history_length(request.window):].clone(),
        start_latent=loop.source.start_latent, image_tokens=loop.source.image_tokens, seed=request.seed,
        generator_state=sampler.generator.get_state(), segments=loop.ordered_segments(),
        edge_count=2 * request.window, width=loop.source.width, height=loop.source.height,
        window=request.window, prompt=request.prompt))
