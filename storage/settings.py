"""Every setting in one place, read from the environment and `.env` (see `.env.example`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Jobs, images, checkpoints and videos live here.")

    # Model weights: a local folder laid out like the Hugging Face repos, or the HF cache when unset.
    framepack_models_dir: Path | None = None
    # Download missing weights on first use (off: only what `framepack-bot download` fetched is used).
    framepack_auto_download: bool = True
    engine_device: str | None = None  # "cuda", "cuda:1" or "cpu"; None picks CUDA when present

    # Input limits, checked before anything is queued or rendered.
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 30_000_000
    max_prompt_chars: int = 1_000
    max_seconds: float = 120.0

    # Rendering defaults (SPEC.md section 9).
    default_seconds: float = 5.0
    default_steps: int = 25
    default_seed: int = 31337
    video_crf: int = 16


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
