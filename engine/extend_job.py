"""An extension job from the queue, run by the worker: its source found in the data folder, continued by
engine/extend.py with the worker's callbacks, and the settings its video is stamped with.

The source is a finished job's work folder (its kept latents; an extension's own folder keeps them too, so an
extension of an extension is the same call) or the video a person sent, stored in the job's folder.
"""

from __future__ import annotations

from pathlib import Path

from engine.extend import extend
from engine.made_with import extension_made_with
from engine.models import FramePackModels
from engine.render import Callbacks, RenderRequest
from storage.files import JobFiles
from storage.jobs import Job
from storage.uploaded_videos import VideoLimits
from storage.video_metadata import MadeWith


def extension_source(files: JobFiles, job: Job) -> tuple[Path, str]:
    """(what extend() continues, the name the video's metadata gives it)."""
    source = job.extends
    if source.job_id is not None:
        return files.work_dir(source.job_id), f"framepack_{source.job_id}.mp4"  # the name it was delivered with
    return files.source_video_path(job.id), source.video_name or "video"


def run_extension(models: FramePackModels, files: JobFiles, job: Job, request: RenderRequest,
                  callbacks: Callbacks, limits: VideoLimits) -> tuple[Path, MadeWith]:
    """Extend the job's source into the job's video; resumes from the job's work folder like a render."""
    source, name = extension_source(files, job)
    video = files.video_path(job.id)
    result = extend(models, source, request, files.work_dir(job.id), video, on_step=callbacks.on_step,
                    on_section=callbacks.on_section, should_cancel=callbacks.should_cancel,
                    should_pause=callbacks.should_pause, limits=limits, source_name=name)
    extends = {**result.extends, **({"job": job.extends.job_id} if job.extends.job_id is not None else {})}
    return video, extension_made_with(request, extends, job_id=job.id, platform=job.platform)
