"""What a job is: the request a frontend makes, and the row a worker and a frontend read back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobLora:
    """A LoRA a job asked for: its file's name in LORA_DIR (without .safetensors), the file's sha256 when the job
    was queued (the worker refuses a file that changed since, so a re-roll is exact) and its strength."""

    name: str
    sha256: str
    strength: float = 1.0


@dataclass(frozen=True)
class JobParams:
    seconds: float = 5.0
    variant: str = "original"
    seed: int = 31337
    steps: int = 25
    resolution: int = 640
    upload_limits: tuple[int, ...] = ()  # byte limits the finished video must also fit, one copy each
    teacache: float = 0.0  # TeaCache threshold asked for by the person ("fast"); 0: the worker's ENGINE_TEACACHE
    # Directing the motion (issue 16). A row from before them reads back as these defaults: a plain job.
    negative_prompt: str = ""
    cfg: float = 1.0  # real classifier-free guidance above 1: two transformer passes a step
    cfg_rescale: float = 0.0
    end_strength: float = 1.0  # how strongly an end picture pulls
    loop: bool = False  # the video ends on its own start picture
    loras: tuple[JobLora, ...] = ()  # up to 3 (storage/lora_catalog.py); a row from before them reads back none

    def __post_init__(self):
        # Params come back from JSON as lists of dicts.
        object.__setattr__(self, "loras", tuple(lora if isinstance(lora, JobLora) else JobLora(**lora)
                                                for lora in self.loras))

    @property
    def sections(self) -> int:
        return max(round(self.seconds * 30 / 36), 1)

    @property
    def total_steps(self) -> int:
        return self.sections * self.steps


@dataclass(frozen=True)
class GuidePictures:
    """Which pictures besides the start one a job carries: an end picture, keyframes at these seconds."""

    end: bool = False
    keyframes: tuple[float, ...] = ()  # seconds of each keyframe picture, in the order they were given

    @property
    def any(self) -> bool:
        return self.end or bool(self.keyframes)


@dataclass(frozen=True)
class JobPictures:
    """The bytes of a job's pictures as a person sent them: `keyframes` in the order of its keyframe seconds."""

    start: bytes
    end: bytes | None = None
    keyframes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Extends:
    """What an extension job continues: a finished job of ours (its work folder's kept latents), or a video a
    person sent (its bytes stored in the job's folder, `video_name` the file's name as sent)."""

    job_id: int | None = None
    video_name: str | None = None

    @property
    def from_video(self) -> bool:
        return self.job_id is None


@dataclass(frozen=True)
class NewJob:
    platform: str  # "discord", "telegram", "cli"
    chat_id: str
    user_id: str
    prompt: str
    params: JobParams = field(default_factory=JobParams)
    reply_to: str | None = None
    user_name: str | None = None
    guild_id: str | None = None  # the Discord server it came from; None for DMs and other platforms
    guides: GuidePictures = field(default_factory=GuidePictures)
    extends: Extends | None = None  # an extension job: what it continues; None: a job made from pictures


@dataclass(frozen=True)
class Progress:
    section: int = 0
    sections: int = 0
    step: int = 0
    steps: int = 0
    preview: str | None = None  # path of the newest section preview GIF
    frames_done: int = 0

    @property
    def steps_done(self) -> int:
        return max(self.section - 1, 0) * self.steps + self.step if self.section else 0


@dataclass(frozen=True)
class Job:
    id: int
    platform: str
    chat_id: str
    user_id: str
    prompt: str
    params: JobParams
    state: JobState
    created_at: float
    reply_to: str | None = None
    user_name: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    progress: Progress = field(default_factory=Progress)
    error: str | None = None
    video: str | None = None
    fitted: dict[int, str] = field(default_factory=dict)  # upload limit -> path of the copy under it
    delivered: bool = False
    status_message: str | None = None
    guild_id: str | None = None
    delivery_error: str | None = None  # why it could never be delivered (the person blocked the bot, ...)
    delivery_attempts: int = 0
    guides: GuidePictures = field(default_factory=GuidePictures)
    # when the retention cleanup deleted its folder (pictures, work folder, video); None: not deleted
    files_removed_at: float | None = None
    extends: Extends | None = None  # an extension job's source; None (and every row before them): a plain job
    lease: int = 0  # the number of the claim that returned it: the worker's writes carry it (fencing)

    def video_for_limit(self, limit: int) -> str | None:
        """The largest copy that fits `limit` bytes (the original if no copy was asked for)."""
        fitting = [(lim, path) for lim, path in self.fitted.items() if lim <= limit]
        if fitting:
            return max(fitting)[1]
        return self.video


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    position: int
    eta_seconds: float


class QueueFull(Exception):
    """The person has as many jobs waiting as the limit allows."""


class Unavailable(Exception):
    """The bot cannot take a job right now (its disk is full, say); the message is for the person."""


class StorageNotWritable(RuntimeError):
    """The database or the data folder cannot be written; the message says which and what to do."""


@dataclass(frozen=True)
class WorkerStatus:
    """The render workers as the queue sees them: how many are alive, how many can render, and why not."""

    alive: int
    ready: int
    problems: tuple[str, ...] = ()
    starting: int = 0  # workers getting ready (loading, compiling) before their first job

    @property
    def stalled(self) -> bool:
        """No worker can take a job now: queued jobs wait until one can."""
        return self.ready == 0


# Job ids are SQLite integers: a number outside them cannot name a job (and would overflow the binding).
MAX_JOB_ID = 2**63 - 1


def parse_job_id(text: str) -> int | None:
    """A job number a person typed (or a button carried), or None when it cannot be one."""
    text = text.strip().lstrip("#")
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_JOB_ID else None
