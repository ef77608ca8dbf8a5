"""A jobs row as a Job: the columns both backends select and how they read back."""

from __future__ import annotations

import json

from storage.jobs import Extends, GuidePictures, Job, JobParams, JobState, Progress

JOB_COLUMNS = (
    "id, platform, chat_id, reply_to, user_id, user_name, prompt, params, state, created_at, started_at, "
    "finished_at, worker, lease_expires_at, attempts, cancel_requested, progress, error, result, delivered, "
    "status_message, guild_id, delivery_error, delivery_attempts, guides, files_removed_at, extends_job, "
    "extends_video, lease"
)


def job_from_row(row) -> Job:
    params = json.loads(row[7])
    params["upload_limits"] = tuple(params.get("upload_limits", ()))
    result = json.loads(row[18]) if row[18] else {}
    return Job(
        id=row[0], platform=row[1], chat_id=row[2], reply_to=row[3], user_id=row[4], user_name=row[5],
        prompt=row[6], params=JobParams(**params), state=JobState(row[8]), created_at=row[9],
        started_at=row[10], finished_at=row[11], worker=row[12], lease_expires_at=row[13], attempts=row[14],
        cancel_requested=bool(row[15]), progress=Progress(**json.loads(row[16])) if row[16] else Progress(),
        error=row[17], video=result.get("video"),
        fitted={int(k): v for k, v in result.get("fitted", {}).items()},
        delivered=bool(row[19]), status_message=row[20], guild_id=row[21], delivery_error=row[22],
        delivery_attempts=row[23], guides=_guides_from_json(row[24]), files_removed_at=row[25],
        extends=extends_from_row(row[26], row[27]), lease=row[28],
    )


def extends_from_row(job_id: int | None, video_name: str | None) -> Extends | None:
    """An extension's source; None for a job made from pictures (every row from before migration 7)."""
    if job_id is None and video_name is None:
        return None
    return Extends(job_id, video_name)


def _guides_from_json(text: str | None) -> GuidePictures:
    if not text:
        return GuidePictures()
    raw = json.loads(text)
    return GuidePictures(end=bool(raw.get("end")), keyframes=tuple(raw.get("keyframes", ())))
