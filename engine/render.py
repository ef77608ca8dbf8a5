"""One video from one image and one prompt: the FramePack section loop with checkpoints and previews.

Everything a job needs lives in its work folder:

    input.png           the picture cropped to its bucket
    conditioning.pt     prompt and image embeddings and the start latent (computed once)
    checkpoint.pt       after every section: history latents, sections done, generator state
    segment_NNNN.mp4    finished frames, encoded as soon as they are final
    section_NNNN.gif    a small preview of each finished section

A run that finds a checkpoint of the same request in its folder resumes from it and produces the
same video as an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import sections as sec
from engine.denoiser import Conditioning, Guidance, SectionContext, make_denoiser
from engine.image_input import prepare_image, scaled_buckets
from engine.models import FramePackModels
from engine.preview import latent_preview, section_gif
from engine.stitch import OverlapStitcher, chunk_latents, vae_decode
from engine.teacache import TeaCache, TeaCacheTransformer
from engine.text_encoding import encode_prompt
from engine.unipc import Cancelled, Paused, flux_mu, flux_sigmas, sample_unipc
from engine.video import concat_segments, frames_to_uint8, write_segment
from storage.inputs import InputError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
MAX_SECONDS = 120.0
MAX_STEPS = 100

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
        return RenderRequest(**{**asdict(self), "variant": variant})

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


def _fingerprint(request: RenderRequest, image: np.ndarray) -> str:
    fields = asdict(request)
    if not fields["teacache"]:
        del fields["teacache"]  # off: the same fingerprint as before the option existed
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(image.tobytes())
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_if_matching(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a torn or foreign file: start that part over
        log.warning("ignoring unreadable %s: %s", path, error)
        return None
    if data.get("fingerprint") != fingerprint or data.get("version") != CHECKPOINT_VERSION:
        return None
    return data


@torch.no_grad()
def _encode_conditioning(
    models: FramePackModels, image: np.ndarray, request: RenderRequest
) -> tuple[Conditioning, Conditioning | None, torch.Tensor]:
    enc, placement = models.encoders, models.placement
    with placement.text_encoders():
        text, mask, pooled = (t.cpu() for t in encode_prompt(request.prompt, enc))
        if request.cfg != 1.0:
            negative_text = [t.cpu() for t in encode_prompt(request.negative_prompt, enc)]
    with placement.image_encoder():
        pixels = enc.feature_extractor.preprocess(images=image, return_tensors="pt")["pixel_values"]
        siglip = enc.image_encoder(pixel_values=pixels.to(enc.image_encoder.device, enc.image_encoder.dtype))
        image_tokens = siglip.last_hidden_state.cpu()
    positive = Conditioning(text, mask, pooled, image_tokens)
    negative = Conditioning(*negative_text, image_tokens) if request.cfg != 1.0 else None

    # The demos sample the VAE posterior from the unseeded global RNG; a generator of its own, seeded
    # from the job's seed, makes the start latent repeatable without touching the noise draws.
    x = torch.from_numpy(image).float().div(127.5).sub(1.0).permute(2, 0, 1)[None, :, None]
    vae = enc.vae
    with placement.vae():
        posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        start_gen = torch.Generator("cpu").manual_seed(request.seed)
        start = posterior.sample(generator=start_gen) * vae.config.scaling_factor
        start = start.float().cpu()
    return positive, negative, start


class _StepReporter:
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
        return _load_if_matching(self.path, self.fingerprint)

    def save(self, done: int, history: torch.Tensor, generator_state: torch.Tensor, segments: dict[int, int],
             partial: dict | None = None):
        """`partial`: a section stopped between steps (its noise already drawn, the sampler's tensors)."""
        _save_atomic(
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
) -> RenderResult:
    """Render `request` into `out_path`; resumable through `work_dir`.

    Raises Cancelled when `should_cancel` turns true (within one step), and Paused when `should_pause`
    does, after saving the step it stopped at, so that the next run continues from that very step.
    """
    request = request.checked(max_prompt_chars=10**6)
    variant = request.variant
    if variant is not models.variant:
        raise ValueError(f"The loaded transformer is the {models.variant.value} variant, not {variant.value}.")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = models.device
    transformer = models.transformer
    dtype = transformer.dtype
    window, sections = request.window, request.sections

    cropped = prepare_image(image, scaled_buckets(request.resolution))
    height, width = cropped.shape[:2]
    Image.fromarray(cropped).save(work_dir / "input.png")
    fingerprint = _fingerprint(request, cropped)

    cond_path = work_dir / "conditioning.pt"
    cond = _load_if_matching(cond_path, fingerprint)
    if cond is None:
        positive, negative, start_latent = _encode_conditioning(models, cropped, request)
        _save_atomic(
            {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "positive": positive,
             "negative": negative, "start_latent": start_latent},
            cond_path,
        )
    else:
        positive, negative, start_latent = cond["positive"], cond["negative"], cond["start_latent"]
    positive_dev = positive.to(device, dtype)
    negative_dev = negative.to(device, dtype) if negative is not None else None
    guidance = Guidance(request.distilled_guidance, request.cfg, request.cfg_rescale)

    checkpoint = _Checkpoint(work_dir / "checkpoint.pt", fingerprint)
    saved = checkpoint.load()
    generator = torch.Generator("cpu").manual_seed(request.seed)
    stitcher = OverlapStitcher(sec.overlap_frames(window), variant is sec.Variant.ORIGINAL, sections)
    keep = max(sec.HISTORY_CONTEXT, 2 * window + 1)
    partial = None
    if saved is not None:
        done, history, segments = saved["sections_done"], saved["history"], saved["segments"]
        generator.set_state(saved["generator_state"])
        partial = saved.get("partial")
        if done > 0:
            previous = chunk_latents(variant, history, done - 1, sections, window)
            with models.placement.vae():
                stitcher.restore(vae_decode(previous, models.encoders.vae), done)
        log.info("resuming at section %d of %d%s", done + 1, sections,
                 f", step {partial['sampler']['step'] + 1}" if partial else "")
    else:
        done, history, segments = 0, sec.initial_history(variant, start_latent), {}
    resumed_from = done

    latent_h, latent_w = height // 8, width // 8
    mu = flux_mu(window * latent_h * latent_w // 4)
    sigmas = flux_sigmas(request.steps, mu).to(device)
    layouts = sec.section_layouts(variant, sections, window)
    teacache = None
    if request.teacache > 0:
        teacache = TeaCache(request.teacache, models.placement.before_first_block)
    frames_done = sum(int(n) for n in segments.values())

    def write_block(rank: int, block: torch.Tensor) -> int:
        if block.shape[1] == 0:
            return 0
        name = f"segment_{rank:04d}.mp4"
        write_segment(work_dir / name, frames_to_uint8(block), request.crf)
        segments[rank] = block.shape[1]
        return block.shape[1]

    def finish_section(index: int, blocks: list, chunk: torch.Tensor, history: torch.Tensor, generator_state,
                       **timings: float) -> None:
        """On the output thread: the section's frames, preview and checkpoint, then its event."""
        nonlocal frames_done
        start = time.perf_counter()
        for rank, block in blocks:
            frames_done += write_block(rank, block)
        gif = section_gif(frames_to_uint8(chunk), work_dir / f"section_{index + 1:04d}.gif")
        checkpoint.save(index + 1, history, generator_state, segments)
        if on_section is not None:
            on_section(SectionEvent(index + 1, sections, gif, frames_done, request.frames,
                                    output_seconds=time.perf_counter() - start, **timings))

    output = _OutputStage()
    try:
        for index in range(done, sections):
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            if should_pause is not None and should_pause():
                output.drain()
                raise Paused()  # the checkpoint of the last section is the place to resume from
            layout = layouts[index]
            start_state = generator.get_state()
            if partial is not None:  # this section's noise was drawn before the pause
                generator.set_state(partial["generator_state"])
                noise = torch.zeros((1, 16, window, latent_h, latent_w))
            else:
                noise = torch.randn((1, 16, window, latent_h, latent_w), generator=generator, dtype=torch.float32)
            clean, x2, x4 = sec.history_inputs(variant, history, start_latent)
            context = SectionContext(
                indices_noisy=layout.noisy.to(device),
                clean=clean.to(device, dtype),
                indices_clean=layout.clean.to(device),
                history_2x=x2.to(device, dtype),
                indices_2x=layout.history_2x.to(device),
                history_4x=x4.to(device, dtype),
                indices_4x=layout.history_4x.to(device),
            )
            model = transformer
            if teacache is not None:
                teacache.reset(request.steps * (1 if negative_dev is None else 2))
                if partial is not None and partial.get("teacache"):
                    teacache.load_state(partial["teacache"], device)
                model = TeaCacheTransformer(transformer, teacache)
            denoise = make_denoiser(model, positive_dev, negative_dev, context, guidance)
            report_step = _StepReporter(on_step, index + 1, sections, request.steps)
            clock = time.perf_counter()
            try:
                with models.placement.transformer():
                    generated = sample_unipc(
                        denoise, noise.to(device), sigmas, report_step, should_cancel, should_pause,
                        state=partial["sampler"] if partial else None,
                    ).cpu()
            except Paused as paused:
                output.drain()  # the earlier sections' checkpoints first, then this one
                partial = {"generator_state": generator.get_state(), "sampler": paused.state,
                           "teacache": teacache.state() if teacache is not None else None}
                checkpoint.save(index, history, start_state, segments, partial)
                log.info("paused at section %d, step %d", index + 1, paused.state["step"] + 1)
                raise
            partial = None
            sampled = time.perf_counter()
            history, _ = sec.extend_history(variant, history, generated, start_latent, layout.is_last)
            with models.placement.vae():
                chunk = vae_decode(chunk_latents(variant, history, index, sections, window), models.encoders.vae)
            history = sec.trim_history(variant, history, keep)
            blocks = [stitcher.add(chunk)]
            if index == sections - 1:
                blocks.append(stitcher.finish())
            decoded = time.perf_counter()
            blocked = output.make_room()
            output.submit(functools.partial(
                finish_section, index, blocks, chunk, history, generator.get_state(),
                sample_seconds=sampled - clock, decode_seconds=decoded - sampled, blocked_seconds=blocked,
            ))
        output.drain()
    except BaseException:
        output.close(quiet=True)  # the first error is the one to report
        raise
    output.close()

    ordered = [work_dir / f"segment_{rank:04d}.mp4" for rank in sorted(segments)]
    concat_segments(ordered, Path(out_path))
    frames = sum(segments.values())
    return RenderResult(Path(out_path), frames, width, height, frames / sec.FPS, resumed_from)
