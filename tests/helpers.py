"""Helpers shared by the worker and serve tests."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from conftest import make_picture

from engine.models import load_models
from engine.render import RenderRequest, render
from storage.jobs import JobParams
from storage.settings import Settings


def video_frames(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def picture_bytes() -> bytes:
    buffer = io.BytesIO()
    make_picture().save(buffer, format="PNG")
    return buffer.getvalue()


def worker_settings(tmp_path: Path, models_dir: Path, **changes) -> Settings:
    base = dict(data_dir=tmp_path / "data", framepack_models_dir=models_dir, engine_device="cpu",
                framepack_auto_download=False, lease_seconds=2.0, max_queued_per_user=50)
    return Settings(**{**base, **changes})


def damage_input(store, job_id: int, data: bytes = b"damaged on disk") -> None:
    """A queued job's picture replaced by bad bytes, where every host would read it: on disk, and in the bucket
    too when the store keeps job files there (a worker elsewhere fetches the bucket's copy, which wins)."""
    path = store.files.input_path(job_id)
    path.write_bytes(data)
    job_sync = getattr(store, "job_sync", None)
    if job_sync is not None:
        job_sync.objects.put_file(job_sync.key(path), path)


def remove_input(store, job_id: int) -> None:
    """A job's picture gone everywhere a re-roll or /info would look: on disk, and in the bucket too when the
    store keeps job files there (a frontend fetches the bucket's copy when its disk has none)."""
    path = store.files.input_path(job_id)
    path.unlink()
    job_sync = getattr(store, "job_sync", None)
    if job_sync is not None:
        job_sync.objects.delete([job_sync.key(path)])


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATA_DIR": str(settings.data_dir),
        "FRAMEPACK_MODELS_DIR": str(settings.framepack_models_dir),
        "ENGINE_DEVICE": "cpu",
        "FRAMEPACK_AUTO_DOWNLOAD": "false",
        "LEASE_SECONDS": str(settings.lease_seconds),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def reference_video(models_dir: Path, tmp_path: Path, params: JobParams, prompt: str) -> np.ndarray:
    models = load_models(params.variant, "cpu", models_dir)
    request = RenderRequest(prompt=prompt, seconds=params.seconds, variant=params.variant, seed=params.seed,
                            steps=params.steps, resolution=params.resolution, teacache=params.teacache)
    result = render(models, make_picture(), request, tmp_path / "reference", tmp_path / "reference.mp4")
    return video_frames(result.video)


async def wait_for(predicate, timeout: float = 120.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError("condition not met in time")


async def job_finished(store, job_id: int):
    """The job once it has finished (done, failed or cancelled), else None: a wait_for predicate."""
    job = await store.get(job_id)
    return job if job.state.finished else None


def video_with_settings(tmp_path: Path, made_with=None) -> bytes:
    """A tiny MP4 (random frames, as the engine encodes them) carrying `made_with`, or no settings at all."""
    from engine.video import write_segment
    from storage.video_metadata import write_made_with

    path = Path(tmp_path) / f"made_{time.monotonic_ns()}.mp4"
    write_segment(path, np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    if made_with is not None:
        write_made_with(path, made_with)
    return path.read_bytes()


async def stored_job_and_video(store, tmp_path: Path, platform: str, **made_with_changes) -> tuple[int, bytes]:
    """A queued job of someone else's, with its picture stored, and a video that says it came from that job."""
    from storage.jobs import NewJob
    from storage.video_metadata import MadeWith

    params = JobParams(seconds=2.0, seed=5, steps=3, cfg=3.0, negative_prompt="blur")
    job_id = (await store.enqueue(NewJob(platform, "42", "999", "a fox runs", params), picture_bytes())).job_id
    made = MadeWith(**{"prompt": "a fox runs", "seed": 5, "variant": "original", "steps": 3, "seconds": 2.0,
                       "cfg": 3.0, "negative_prompt": "blur", "version": "0.1.0", "job_id": job_id,
                       "platform": platform, **made_with_changes})
    return job_id, video_with_settings(tmp_path, made)


def counting_decoder_calls(vae) -> list[int]:
    """The batch size of each call of the VAE's decoder from now on (its forward wrapped in place)."""
    batches = []
    forward = vae.decoder.forward
    vae.decoder.forward = lambda tiles: batches.append(tiles.shape[0]) or forward(tiles)
    return batches
