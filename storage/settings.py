"""Every setting in one place, read from the environment and `.env` (see `.env.example`)."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values  # pydantic-settings reads .env with it
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.limits import BOUNDS, VARIANTS, Limits, parse_variants
from storage.url_secrets import bad_hosts, masked_url, split_credentials

log = logging.getLogger(__name__)

# The engine's names (engine/memory_modes.py, engine/speed.py; a test keeps them in step), here so that a
# typo stops `serve` at start-up instead of failing jobs in the workers, which never import on this side.
MEMORY_MODES = ("auto", "high", "low")
ATTENTION_KERNELS = ("auto", "sdpa", "cudnn", "flash", "efficient", "fa3", "cudnn-fe", "cudnn-fp8")
DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?|auto")  # what engine.models.resolve_device takes (fullmatch)
SECRETS = ("discord_token", "telegram_token", "database_url", "storage_secret_access_key")  # never echoed in an error
# A key in .env that starts like ours but is none of them is most likely a typo (it would be ignored).
OUR_PREFIXES = ("MAX_", "ENGINE_", "DISCORD_", "TELEGRAM_", "DEFAULT_", "VIDEO_", "FRAMEPACK_", "LORA_", "STORAGE_")
MIN_LEASE_SECONDS = 2.0  # a worker renews every quarter lease; the worker tests run with 2 s
# Under a quarter of an hour a job's files could go before its person has even opened the video; 0 keeps them.
RETENTION_DAYS_RANGE = (0.01, 3_650.0)


class Settings(BaseSettings):
    # NaN and infinity pass every range check (nan < 5 is False), so no setting takes them.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      allow_inf_nan=False)

    data_dir: Path = Field(Path("data"), description="Jobs, images, checkpoints and videos live here.")
    database_url: str | None = Field(None, repr=False)  # default: sqlite:///<data_dir>/framepack.db; or postgresql://
    # Job files in an S3-compatible bucket as well as under data_dir (storage/object_store.py): s3://bucket/prefix,
    # or file:///shared/folder. Unset: data_dir alone. Credentials: the STORAGE_ ones, else AWS_* / the instance's.
    storage_url: str | None = None
    storage_endpoint_url: str | None = None  # MinIO, R2, Ceph: http(s)://host:port; unset: AWS
    storage_region: str | None = None
    storage_access_key_id: str | None = None
    storage_secret_access_key: str | None = Field(None, repr=False)

    # Model weights: a local folder laid out like the Hugging Face repos, or the HF cache when unset.
    framepack_models_dir: Path | None = None
    # Download missing weights on first use (off: only what `framepack-bot download` fetched is used).
    framepack_auto_download: bool = True
    engine_device: str | None = None  # "cuda", "cuda:1" or "cpu"; None picks CUDA when present
    # HunyuanVideo LoRA files (NAME.safetensors) that jobs may name (engine/lora.py); unset: DATA_DIR/loras
    lora_dir: Path | None = None

    # Limits: the defaults; admins change them at runtime (stored in the database). The ranges of the
    # ones admins change are storage/limits.py's BOUNDS, checked below.
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 30_000_000
    max_prompt_chars: int = Field(1_000, ge=1, le=10_000)
    max_seconds: float = 120.0
    max_steps: int = 50
    max_queued_per_user: int = 3
    allowed_variants: str = "original,f1"
    # Extending an uploaded video (storage/uploaded_videos.py), fixed here rather than by admins: the largest file in
    # bytes, the longest video in seconds, the largest frame in pixels, and the video codecs decoded at all.
    max_extend_video_bytes: int = Field(200_000_000, ge=1_000_000, le=4_000_000_000)
    max_extend_video_seconds: float = Field(120.0, gt=0, le=3_600)
    max_extend_video_pixels: int = Field(8_294_400, ge=4_096, le=100_000_000)
    extend_video_codecs: str = "h264,hevc,vp8,vp9,av1"

    # Chat frontends: each one runs when its token is set.
    discord_token: str | None = Field(None, repr=False)
    discord_api_url: str = "https://discord.com/api/v10"  # a proxy or a test server; its /gateway/bot names the gateway
    discord_guild_ids: str = ""  # comma-separated: commands appear there at once (global sync can take an hour)
    discord_admin_user_ids: str = ""  # comma-separated Discord user ids: every job and the limits, everywhere
    discord_manage_server_admins: bool = True  # members with Manage Server may cancel their server's jobs
    telegram_token: str | None = Field(None, repr=False)
    telegram_api_url: str = "https://api.telegram.org"  # a self-hosted Bot API server or a test server
    telegram_admin_ids: str = ""  # comma-separated Telegram user ids
    # bytes; a self-hosted Bot API server allows up to 2 GB
    telegram_upload_limit: int = Field(50_000_000, ge=1_000_000, le=2_000_000_000)
    # bytes a bot may download (getFile); unset: 20 MiB on api.telegram.org, none elsewhere; 0: none
    telegram_download_limit: int | None = Field(None, ge=0, le=2_000_000_000)
    # bytes of a video /info downloads to read its settings (Telegram's download limit applies as well)
    max_info_video_bytes: int = Field(100_000_000, ge=1_000_000, le=2_000_000_000)

    # Queue and workers.
    engine_gpus: str | None = None  # "0,1": one worker per listed GPU; unset: every visible GPU
    engine_workers: int = Field(1, ge=1, le=64)  # workers when ENGINE_DEVICE=cpu
    fair_queue: bool = True  # round-robin across people instead of strictly oldest first
    # a worker that stops renewing for this long has died
    lease_seconds: float = Field(60.0, ge=MIN_LEASE_SECONDS, le=86_400)
    # ETA before a worker has measured itself (H100: 1.15)
    default_seconds_per_step: float = Field(1.2, gt=0, le=3_600)
    default_section_overhead: float = Field(6.0, ge=0, le=3_600)
    # a TeaCache job's step time over a plain one's, until measured
    default_teacache_factor: float = Field(0.5, gt=0, le=1)
    # how long `serve` waits for a worker to save and exit
    shutdown_grace_seconds: float = Field(120.0, gt=0, le=3_600)
    # days a finished, delivered job's folder (pictures, work folder with the kept latents an Extend needs, the
    # video) is kept before `serve` deletes it; its row stays. 0: kept forever (checked below)
    result_retention_days: float = 7.0

    # Rendering defaults (SPEC.md section 9).
    default_seconds: float = 5.0  # 1..max_seconds
    default_steps: int = 25  # 1..max_steps
    default_seed: int = Field(31337, ge=0, lt=2**63)
    # the bucket size chat jobs render at (64: the tests' tiny models; buckets snap to the 16-pixel grid)
    render_resolution: int = Field(640, ge=64, le=1024)
    video_crf: int = Field(16, ge=0, le=51)  # x264: 0 lossless, 51 worst

    # Engine speed and memory (README "Speed and memory"; benchmarks/README.md has the figures).
    # auto (the planner: what fits the GPU memory and RAM at hand) | high (all on the GPU, ~61 GB) | low (~6 GB GPU,
    # everything streamed from ~43 GB of pinned RAM)
    engine_memory_mode: str = "auto"
    # the budgets the planner may use, in GiB (default: the GPU memory free and the RAM available at start)
    engine_vram_gb: float | None = Field(None, gt=0, le=4096)
    engine_ram_gb: float | None = Field(None, gt=0, le=65536)
    engine_compile: bool = True  # torch.compile of the transformer blocks on CUDA (same math)
    # and of the VAE decoder, with engine_compile: 2.26 s a section's decode against 3.68 s eager at one bucket
    # on an H200, but 3.26 s once a second bucket made its spatial shapes dynamic, and 6 minutes of warm-up
    engine_compile_vae: bool = False
    # the eager decoder with GroupNorm's statistics, SiLU, padding and upsampling regrouped (engine/fast_decode.py),
    # in Triton kernels on CUDA where Triton works (engine/decode_kernels.py): on an H200 1.71 s a section's decode
    # against 3.58 s, the pixels the same up to rounding (64 dB); false: diffusers' decode as it is
    engine_fast_decode: bool = True
    # auto (the fastest installed kernel that passes a start-up test call: FA3 on Hopper, FP8 attention with
    # engine_fp8 when nvidia-cudnn-frontend is installed; else PyTorch's SDPA choice)
    # | sdpa | cudnn | flash | efficient | fa3 | cudnn-fe | cudnn-fp8
    engine_attention: str = "auto"
    engine_fp8: bool = False  # FP8 transformer linears: half the memory, faster on Ada/Hopper; results change
    # TeaCache threshold for every job; 0 off, 0.15 the demos' (~2x, visible)
    engine_teacache: float = Field(0.0, ge=0, le=1)
    # low mode: GPU slots per block kind (engine/offload.py needs two: one runs while one loads)
    engine_stream_slots: int = Field(2, ge=2, le=20)
    # a worker renders a one-step throw-away clip at two bucket shapes before its first claim (compiling,
    # autotuning), so no person's job waits for it
    engine_warm_up: bool = True
    # torch's compile cache (Inductor and Triton kernels); unset: DATA_DIR/cache/torch-compile
    engine_compile_cache_dir: Path | None = None

    @property
    def compile_cache_dir(self) -> Path:
        return self.engine_compile_cache_dir or Path(self.data_dir) / "cache" / "torch-compile"

    def starting_limits(self) -> Limits:
        """The limits as configured, before any admin command changes them."""
        return Limits(max_seconds=self.max_seconds, max_steps=self.max_steps,
                      max_queued_per_user=self.max_queued_per_user, max_image_pixels=self.max_image_pixels,
                      max_image_bytes=self.max_image_bytes,
                      allowed_variants=tuple(parse_variants(self.allowed_variants)))

    @field_validator("engine_memory_mode", "engine_attention")
    @classmethod
    def _one_of_the_engine_names(cls, value: str, info) -> str:
        choices = MEMORY_MODES if info.field_name == "engine_memory_mode" else ATTENTION_KERNELS
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    @model_validator(mode="after")
    def _lora_dir_under_data_dir(self) -> Settings:
        if self.lora_dir is None:
            self.lora_dir = Path(self.data_dir) / "loras"
        return self

    @field_validator("data_dir", "framepack_models_dir", "engine_compile_cache_dir", "lora_dir")
    @classmethod
    def _a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError("is a file, not a folder")
        return value

    @field_validator("database_url", "discord_token", "telegram_token")
    @classmethod
    def _a_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None  # an empty line in .env means unset
        if value is None:
            return None
        if info.field_name == "database_url" and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("use sqlite:///path/to/file.db or postgresql://user:password@host:5432/database "
                             "(or leave it unset)")
        if info.field_name == "database_url" and not value.startswith("sqlite:") and (problem := bad_hosts(value)):
            raise ValueError(problem)
        if info.field_name != "database_url" and any(c.isspace() for c in value):
            raise ValueError("has a space in it; paste the token alone")
        return value

    @field_validator("storage_url")
    @classmethod
    def _a_storage_url(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        if value is not None and not value.startswith(("s3://", "file://")):
            raise ValueError("use s3://bucket/prefix or file:///path/to/folder (or leave it unset)")
        if value is not None and split_credentials(value)[1] is not None:
            raise ValueError("holds credentials (name:key@): put them in STORAGE_ACCESS_KEY_ID and "
                             "STORAGE_SECRET_ACCESS_KEY instead")
        return value

    @field_validator("engine_device")
    @classmethod
    def _a_device(cls, value: str | None) -> str | None:
        value = (value or "").strip().lower() or None
        if value is not None and not DEVICE_NAME.fullmatch(value):
            raise ValueError("must be cpu, cuda or cuda:N (N a GPU number)")
        return value

    @field_validator("max_seconds", "max_steps", "max_queued_per_user", "max_image_pixels", "max_image_bytes")
    @classmethod
    def _within_the_hard_bounds(cls, value: float, info: ValidationInfo) -> float:
        low, high = BOUNDS[info.field_name]
        if info.field_name == "max_queued_per_user":
            high = math.inf  # no ceiling here: admins stop at 1000, but tests/test_storage.py queues 10000
        if not low <= value <= high:
            low_text, high_text = (f"{v:g}" if isinstance(v, float) else str(v) for v in (low, high))
            raise ValueError(f"must be at least {low_text}" if high == math.inf
                             else f"must be between {low_text} and {high_text}")
        return value

    @field_validator("default_seconds", "default_steps")
    @classmethod
    def _within_the_maximum(cls, value: float, info: ValidationInfo) -> float:
        name = "max_" + info.field_name.removeprefix("default_")
        # Validated above, in field order; absent when it was itself refused (its own error says why).
        maximum = info.data.get(name, BOUNDS[name][1])
        if not 1 <= value <= maximum:
            raise ValueError(f"must be between 1 and {name.upper()} ({maximum:g})")
        return value

    @field_validator("result_retention_days")
    @classmethod
    def _a_retention(cls, value: float) -> float:
        low, high = RETENTION_DAYS_RANGE
        if value != 0 and not low <= value <= high:
            raise ValueError(f"must be 0 (keep forever) or between {low:g} and {high:g} days")
        return value

    @field_validator("allowed_variants")
    @classmethod
    def _variants(cls, value: str) -> str:
        try:
            return ",".join(parse_variants(value))
        except ValueError:
            raise ValueError(f"must be a comma list of {', '.join(VARIANTS)}") from None

    @field_validator("engine_gpus", "discord_guild_ids", "discord_admin_user_ids", "telegram_admin_ids")
    @classmethod
    def _numbers(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        # One form, "1,2", whatever the separators: the Telegram frontend splits on commas only.
        parts = [p for p in re.split(r"[\s,]+", value) if p]
        if not all(p.isascii() and p.isdigit() for p in parts):
            what = "GPU numbers, e.g. 0,1" if info.field_name == "engine_gpus" else "numeric ids"
            raise ValueError(f"must be {what} separated by commas")
        if info.field_name == "engine_gpus" and len({int(p) for p in parts}) < len(parts):
            raise ValueError("names a GPU twice: each GPU runs one worker")
        return ",".join(parts)

    @field_validator("extend_video_codecs")
    @classmethod
    def _codec_names(cls, value: str) -> str:
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        if not names or not all(re.fullmatch(r"[a-z0-9_]+", name) for name in names):
            raise ValueError("must be ffmpeg codec names separated by commas, e.g. h264,hevc,vp9")
        return ",".join(names)

    @field_validator("storage_endpoint_url")
    @classmethod
    def _an_optional_address(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        return None if value is None else cls._an_address(value)

    @field_validator("discord_api_url", "telegram_api_url")
    @classmethod
    def _an_address(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// address")
        return value


class SettingsError(Exception):
    """Settings that do not parse, in words for the person who wrote them."""


def describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        shown = e.get("input")
        if e["loc"] and e["loc"][0] in SECRETS:
            shown = "***"
        elif isinstance(shown, str) and "://" in shown:  # STORAGE_URL, say: a key typed into it stays hidden
            shown = masked_url(shown)
        lines.append(f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']} (got {shown!r})")
    return "Invalid settings (environment or .env):\n  " + "\n  ".join(lines)


def misspelled(keys: Iterable[str]) -> list[str]:
    """Warnings for keys that look like one of our settings but are none: they would be ignored silently."""
    names = [name.upper() for name in Settings.model_fields]
    warnings = []
    for key in keys:
        upper = key.upper()
        if upper in names:
            continue
        close = difflib.get_close_matches(upper, names, n=1, cutoff=0.8)
        prefix = next((p for p in OUR_PREFIXES if upper.startswith(p)), None)
        if not close and prefix:
            close = difflib.get_close_matches(upper, [n for n in names if n.startswith(prefix)], n=1, cutoff=0)
        if close:
            warnings.append(f"{key} in .env is not a setting and is ignored; did you mean {close[0]}?")
    return warnings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env_file = Path(Settings.model_config["env_file"])
    try:
        if env_file.is_file():
            for warning in misspelled(dotenv_values(env_file, encoding="utf-8")):
                log.warning(warning)
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe(error)) from None
    except UnicodeDecodeError as error:
        raise SettingsError(f"{env_file.resolve()} is not UTF-8 text (byte {error.start} is not): save it as "
                            "UTF-8") from None
