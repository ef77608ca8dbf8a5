"""What an extension request must satisfy before it is queued: the sampler it needs, one plain prompt, and a
source the person may continue that is still stored. Plain checks on rows and files, shared by the stores."""

from __future__ import annotations

from storage.direction_rules import parse_timed_prompt
from storage.files import JobFiles
from storage.inputs import InputError
from storage.jobs import Job, JobState, NewJob
from storage.limits import Limits
from storage.retention import expiry_cutoff

# What a finished render or extension keeps for the next one (engine/continuation.py FILE_NAME; a test keeps
# the two in step).
KEPT_LATENTS = "continuation.pt"
REMOVED = ("The files of job {job} were deleted after the bot's keeping period, so it can no longer be extended "
           "from its kept frames; send the video itself with /extend instead.")


def check_extension_request(job: NewJob, limits: Limits) -> None:
    """The parts that need no source: an InputError for the person, a ValueError for a frontend's mistake."""
    extends = job.extends
    if extends is None or (extends.job_id is None) == (extends.video_name is None):
        raise ValueError("an extension names either the job or the video it continues")
    if job.params.variant != "f1" or job.guides.any:
        raise ValueError("an extension is sampled with f1 and carries no pictures")
    if "f1" not in limits.allowed_variants:
        raise InputError("Extending a video uses the f1 (forward) sampler, which is switched off here.")
    if parse_timed_prompt(job.prompt, job.params.seconds) is not None:
        raise InputError("An extension takes one plain prompt, not timed ones.")


def check_extension_source(job: NewJob, source: Job | None, files: JobFiles, retention_days: float,
                           now: float) -> None:
    """The finished job `job` continues: on this platform, the person's own or shown in this chat, done, and its
    kept latents still stored (and not about to be deleted by the retention cleanup)."""
    source_id = job.extends.job_id
    if source is None or source.platform != job.platform:
        raise InputError(f"There is no job {source_id} here.")
    if source.user_id != job.user_id and source.chat_id != job.chat_id:
        raise InputError(f"Job {source_id} was made in another chat; only the person who asked for it can extend "
                         "it elsewhere.")
    if not source.state.finished:
        raise InputError(f"Job {source_id} is not finished yet; extend it once its video is here.")
    if source.state is not JobState.DONE:
        raise InputError(f"Job {source_id} has no video to extend (it was {source.state.value}).")
    cutoff = expiry_cutoff(retention_days, now)
    expiring = cutoff is not None and source.finished_at is not None and source.finished_at < cutoff
    if source.files_removed_at is not None or expiring:
        raise InputError(REMOVED.format(job=source_id))
    if not (files.work_dir(source_id) / KEPT_LATENTS).is_file():
        raise InputError(f"Job {source_id} kept nothing to continue from (its files are gone, or it was made "
                         "before videos could be extended); send the video itself with /extend instead.")
