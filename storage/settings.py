"""Every setting in one place, read from the environment and `.env` (see `.env.example`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The engine's names (engine/memory_modes.py, engine/speed.py; a test keeps them in step), here so that a
# typo stops `serve` at start-up instead of failing jobs in the workers, which never import on this side.
MEMORY_MODES = ("auto", "high", "low")
ATTENTION_KERNELS = ("auto", "sdpa", "cudnn", "flash", "efficient", "fa3", "cudnn-fe", "cudnn-fp8")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Jobs, images, checkpoints and videos live here.")
    database_url: str | None = None  # default: sqlite:///<data_dir>/framepack.db

    # Model weights: a local folder laid out like the Hugging Face repos, or the HF cache when unset.
    framepack_models_dir: Path | None = None
    # Download missing weights on first use (off: only what `framepack-bot download` fetched is used).
    framepack_auto_download: bool = True
    engine_device: str | None = None  # "cuda", "cuda:1" or "cpu"; None picks CUDA when present

    # Limits: the defaults; admins change them at runtime (stored in the database).
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 30_000_000
    max_prompt_chars: int = 1_000
    max_seconds: float = 120.0
    max_steps: int = 50
    max_queued_per_user: int = 3
    allowed_variants: str = "original,f1"

    # Chat frontends: each one runs when its token is set.
    discord_token: str | None = None
    discord_api_url: str = "https://discord.com/api/v10"  # a proxy or a test server; its /gateway/bot names the gateway
    discord_guild_ids: str = ""  # comma-separated: commands appear there at once (global sync can take an hour)
    discord_admin_user_ids: str = ""  # comma-separated Discord user ids that may change limits anywhere
    discord_manage_server_admins: bool = True  # members with Manage Server may change limits too
    telegram_token: str | None = None
    telegram_api_url: str = "https://api.telegram.org"  # a self-hosted Bot API server or a test server
    telegram_admin_ids: str = ""  # comma-separated Telegram user ids
    telegram_upload_limit: int = 50_000_000  # bytes; a self-hosted Bot API server allows up to 2 GB

    # Queue and workers.
    engine_gpus: str | None = None  # "0,1": one worker per listed GPU; unset: every visible GPU
    engine_workers: int = 1  # workers when ENGINE_DEVICE=cpu
    fair_queue: bool = True  # round-robin across people instead of strictly oldest first
    lease_seconds: float = 60.0  # a worker that stops renewing for this long has died
    default_seconds_per_step: float = 1.2  # ETA before a worker has measured itself (H100: 1.15)
    default_section_overhead: float = 6.0
    default_teacache_factor: float = 0.5  # a TeaCache job's step time over a plain one's, until measured
    shutdown_grace_seconds: float = 120.0  # how long `serve` waits for a worker to save and exit

    # Rendering defaults (SPEC.md section 9).
    default_seconds: float = 5.0
    default_steps: int = 25
    default_seed: int = 31337
    render_resolution: int = 640  # the bucket size chat jobs render at
    video_crf: int = 16

    # Engine speed and memory (README "Speed and memory"; benchmarks/README.md has the figures).
    engine_memory_mode: str = "auto"  # auto (high when > 60 GB free) | high | low (~6 GB GPU, streams from RAM)
    engine_compile: bool = True  # regional torch.compile of the transformer blocks on CUDA (same math)
    # auto (the fastest installed kernel that passes a start-up test call: FA3 on Hopper, FP8 attention with
    # engine_fp8 when nvidia-cudnn-frontend is installed; else PyTorch's SDPA choice)
    # | sdpa | cudnn | flash | efficient | fa3 | cudnn-fe | cudnn-fp8
    engine_attention: str = "auto"
    engine_fp8: bool = False  # FP8 transformer linears (Ada/Hopper): faster, results change slightly
    engine_teacache: float = 0.0  # TeaCache threshold for every job; 0 off, 0.15 the demos' (~2x, visible)
    engine_stream_slots: int = 2  # low mode: GPU slots per block kind

    @field_validator("engine_memory_mode", "engine_attention")
    @classmethod
    def _one_of_the_engine_names(cls, value: str, info) -> str:
        choices = MEMORY_MODES if info.field_name == "engine_memory_mode" else ATTENTION_KERNELS
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value


class SettingsError(Exception):
    """Settings that do not parse, in words for the person who wrote them."""


def describe(error: ValidationError) -> str:
    lines = [f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']} (got {e.get('input')!r})"
             for e in error.errors()]
    return "Invalid settings (environment or .env):\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe(error)) from None
