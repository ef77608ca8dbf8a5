"""Getting a worker ready before it claims its first job, so that nobody's job pays for it.

A worker's first job used to wait about 50 s longer than the next (README "Speed and memory"): the weights
loading, the blocks compiling, cuBLAS and cuDNN picking their kernels. Warming up does all of it on
throw-away renders of one step a section at two resolution buckets of different shapes (the second makes the
compiled graphs take any bucket and prompt length without compiling again), before the first claim. With
ENGINE_COMPILE_VAE the first render has as many sections as it takes to decode every window length a job
decodes (the compiled decoder compiles again for each new one: 150 s of an H200 job's decodes when the
warm-up rendered one section); the eager decoder needs one section a bucket.

Torch's compile cache lives on disk (ENGINE_COMPILE_CACHE_DIR), so a restart on the same machine reloads the
compiled kernels instead of compiling them; the log says whether it did.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Two bucket shapes of the 640 list (height, width): the squarest and the widest. Scaled like the jobs' own.
WARM_UP_BUCKETS = ((640, 608), (416, 960))
WARM_UP_PROMPTS = ("A short warm-up clip.", "A slightly longer warm-up clip, so the prompt length differs too.")


@dataclass(frozen=True)
class WarmUp:
    seconds: float
    cache_hits: int  # compiled graphs loaded from the on-disk cache
    cache_misses: int  # compiled afresh (and written to it)

    def describe(self, cache_dir: Path | None) -> str:
        if cache_dir is None or not (self.cache_hits or self.cache_misses):
            where = "nothing compiled"
        elif self.cache_hits and not self.cache_misses:
            where = f"compile cache hit: {self.cache_hits} graphs loaded from {cache_dir}"
        else:
            where = f"compile cache: {self.cache_hits} graphs loaded, {self.cache_misses} compiled into {cache_dir}"
        return f"warmed up in {self.seconds:.1f} s ({where})"


def use_compile_cache(cache_dir: Path) -> Path:
    """Point torch's Inductor and Triton caches at `cache_dir` (created); call before anything compiles."""
    cache_dir = Path(cache_dir)
    (cache_dir / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    return cache_dir


def _cache_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return inductor["fxgraph_cache_hit"], inductor["fxgraph_cache_miss"]


def warm_up_sections(models) -> int:
    """Sections of the first warm-up render. A compiled decoder compiles again for each window length, so
    its render decodes them all: the original variant decodes one window first, two in the middle and two
    plus the start latent last; F1 one plus the start, then two. An eager decoder needs one section."""
    from engine.sections import Variant

    if not getattr(models.encoders.vae.decoder, "_framepack_compiled", False):
        return 1
    return 3 if models.variant is Variant.ORIGINAL else 2


def _seconds_for(sections: int) -> float:
    from engine.sections import FPS, frames_per_call

    return sections * (frames_per_call() + 3) / FPS


def warm_up(models, resolution: int, work_dir: Path, buckets=WARM_UP_BUCKETS, should_cancel=None) -> WarmUp:
    """One step a section at each warm-up bucket through the whole job path (text encoders, image
    encoder, VAE encode, the transformer, the decode, the MP4), on `models` as the jobs will use them.

    The prompt cache is bypassed so the text encoders run too. Raises whatever the render raises (Cancelled
    when `should_cancel` turns true): the worker reports it as a start-up failure, not a job's."""
    import numpy as np
    from PIL import Image

    from engine.image_input import nearest_bucket, scaled_buckets
    from engine.render import RenderRequest, render

    started = time.perf_counter()
    hits, misses = _cache_counts()
    uncached = dataclasses.replace(models, prompt_cache=None)
    served = scaled_buckets(resolution)
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        for index, (height, width) in enumerate(buckets):
            bucket_h, bucket_w = nearest_bucket(height, width, served)  # the served bucket of that shape
            gray = np.full((bucket_h, bucket_w, 3), 127, dtype=np.uint8)
            request = RenderRequest(prompt=WARM_UP_PROMPTS[index % len(WARM_UP_PROMPTS)],
                                    seconds=_seconds_for(warm_up_sections(models) if index == 0 else 1),
                                    variant=models.variant, steps=1, resolution=resolution, seed=index)
            render(uncached, Image.fromarray(gray), request, work_dir / f"bucket-{index}",
                   work_dir / f"bucket-{index}.mp4", should_cancel=should_cancel)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    now_hits, now_misses = _cache_counts()
    return WarmUp(time.perf_counter() - started, now_hits - hits, now_misses - misses)
