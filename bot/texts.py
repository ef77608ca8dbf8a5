"""What the bot says, the same on every platform."""

from __future__ import annotations

from storage.inputs import InputError
from storage.jobs import Job, JobState, QueueFull, Unavailable, WorkerStatus
from storage.limits import Limits

# The refusals a frontend answers with their own words: bad input, a full quota, a server that cannot take
# a job now. Nothing is stored for them.
REFUSED = (InputError, QueueFull, Unavailable)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def queued(job_id: int, position: int, eta_seconds: float) -> str:
    where = "next in line" if position <= 1 else f"#{position} in the queue"
    return f"Job {job_id} is {where}; done in about {duration(eta_seconds)}."


def progress(job: Job, eta_seconds: float) -> str:
    p = job.progress
    if job.state is JobState.QUEUED:
        return f"Job {job.id}: waiting; done in about {duration(eta_seconds)}."
    if not p.sections:
        return f"Job {job.id}: starting (loading the models)..."
    return (f"Job {job.id}: section {p.section}/{p.sections}, step {p.step}/{p.steps}, "
            f"about {duration(eta_seconds)} left.")


def settings_line(job: Job) -> str:
    """Every setting the video was made with, so that a re-roll (which keeps them) or a person can redo it."""
    p = job.params
    parts = [f"seed {p.seed}", f"{p.seconds:g} s", p.variant, f"{p.steps} steps"]
    if job.extends is not None:
        parts[1] = f"{p.seconds:g} s added to " + (f"job {job.extends.job_id}" if job.extends.job_id is not None
                                                   else (job.extends.video_name or "your video")[:80])
    if p.teacache:
        parts.append("fast (TeaCache)")
    if job.guides.end:
        parts.append("end picture" + (f" (strength {p.end_strength:g})" if p.end_strength != 1 else ""))
    if job.guides.keyframes:
        parts.append("keyframes at " + ", ".join(f"{at:g}s" for at in sorted(job.guides.keyframes)))
    if p.loop:
        parts.append("loop")
    if p.cfg > 1:
        parts.append(f"cfg {p.cfg:g}" + (f" (rescale {p.cfg_rescale:g})" if p.cfg_rescale else ""))
    if p.negative_prompt:
        parts.append(f'negative "{p.negative_prompt[:100]}"')
    parts += [f"LoRA {lora.name} {lora.strength:g}" for lora in p.loras]
    return ", ".join(parts)


def finished(job: Job) -> str:
    if job.state is JobState.DONE:
        return f"Done: \"{job.prompt[:200]}\" ({settings_line(job)})."
    if job.state is JobState.CANCELLED:
        return f"Job {job.id} was cancelled."
    return f"Job {job.id} failed: {job.error or 'unknown error'}"


def limits(values: Limits) -> str:
    return "\n".join(f"{name}: {text}" for name, text in values.describe().items())


def help_text(values: Limits, example: str, discord: bool = False) -> str:
    options = ("Options: seconds, seed, steps, variant (original, or f1 for the forward sampler), fast. "
               "Or right-click a message with a picture: Apps > Animate this image." if discord else
               "Options after the prompt: --seconds N, --seed N, --steps N, --f1 (forward sampler), "
               "--fast (about twice as fast, small visible changes).")
    return (
        "I animate a picture into a video with FramePack.\n\n"
        f"{example}\n\n{options}\n\n{direction_help(values, discord)}\n\n"
        f"Limits now: up to {values.max_seconds:g} s, {values.max_steps} steps, "
        f"{values.max_queued_per_user} waiting jobs per person; variants: {', '.join(values.allowed_variants)}.\n"
        "/queue shows your jobs, /cancel N cancels one. "
        + ("Apps > Video info on a video" if discord else "/info in reply to a video")
        + " shows the settings it was made with.\n"
        + (EXTEND_HELP_DISCORD if discord else EXTEND_HELP_TELEGRAM) + "\n"
        + (LORA_HELP_DISCORD if discord else LORA_HELP_TELEGRAM)
    )


def direction_help(values: Limits, discord: bool) -> str:
    """Directing the motion, one example each; a feature the admins switched off says so."""
    if discord:
        lines = [
            ("end_frame", "End picture: /animate image:<start> end_image:<end> prompt:\"she turns around\" "
                          "(original variant)."),
            ("max_keyframes", "Keyframes: /animate_keyframes image:<start> keyframe1:<picture> at1:3 "
                              "prompt:\"she waves\" (up to {max} pictures, each at its second)."),
            ("timed_prompts", "Timed prompts: prompt:\"[0s: a cat sits] [3s: the cat jumps]\"."),
            ("cfg", "Negative prompt and real CFG: negative:\"blurry\" cfg:3 (twice the render time)."),
            ("loop", "Seamless loop: loop:True (the video ends on its start picture)."),
        ]
    else:
        lines = [
            ("end_frame", "End picture: send an album of 2 photos, start then end, with the caption "
                          "she turns around (original variant)."),
            ("max_keyframes", "Keyframes: an album of start, keyframes and end, with the caption "
                              "she waves --at 3s --end (one --at per keyframe, up to {max})."),
            ("timed_prompts", "Timed prompts: [0s: a cat sits] [3s: the cat jumps]"),
            ("cfg", "Negative prompt and real CFG: a cat --negative \"blurry\" --cfg 3 (twice the render time)."),
            ("loop", "Seamless loop: a cat --loop (the video ends on its start picture)."),
        ]
    shown = [text.format(max=values.max_keyframes) if getattr(values, name) else
             text.split(":")[0] + ": switched off here." for name, text in lines]
    return "Directing the motion:\n" + "\n".join(shown)


def queue_summary(jobs: list[Job], positions: dict[int, tuple[int, float]], total: int,
                  workers: WorkerStatus | None = None, max_chars: int = 2000) -> str:
    """A person's waiting and running jobs, each with its place and time, then the queue's length; the jobs
    that would take it past the chat's `max_chars` (an admin may allow many) are counted, not listed."""
    note = waiting_note(workers) if workers is not None else ""
    everyone = f"{total} job(s) waiting in all." + ("\n" + note if note else "")
    if not jobs:
        return f"You have no jobs. {everyone}"
    lines = []
    room = max_chars - len(everyone) - len("\n… and 99999 more of yours.\n")
    for listed, job in enumerate(jobs):
        position, eta = positions.get(job.id, (0, 0.0))
        line = progress(job, eta) if position == 0 else queued(job.id, position, eta)
        room -= len(line) + 1
        if room < 0:
            lines.append(f"… and {len(jobs) - listed} more of yours.")
            break
        lines.append(line)
    return "\n".join([*lines, everyone])


VIDEO_LOST = "Job {job} finished, but its video file was lost on the server. Re-roll it, or try again."

# What people read while no worker can render: the reason (a path, say) is for the admins only.
NO_WORKER = "No worker can render right now; every job waits in the queue and nothing is lost."
STARTING_UP = "The render worker is starting up (loading and compiling the models); jobs start when it is ready."


def waiting_note(workers: WorkerStatus) -> str:
    """Why queued jobs do not move, when no worker can take one: starting up, or unable to render."""
    if not workers.stalled:
        return ""
    return STARTING_UP if workers.starting else NO_WORKER


def worker_problem(worker: str, problem: str) -> str:
    """What the admins are told, once per problem."""
    return (f"Render worker {worker} cannot render: {problem}\n"
            "Queued jobs wait; the worker tries again by itself. This message is sent once per problem.")


CANCEL_OUTCOMES = {
    "cancelled": "Cancelled.",
    "stopping": "Stopping it within a step.",
    "finished": "That job has already finished.",
    "not_found": "No such job.",
    "not_allowed": "Only the person who asked for it (or an admin) can cancel that job.",
}


# ----- extending a video --------------------------------------------------------------------------------

EXTEND_HELP_DISCORD = ("Extend a video: the Extend button under it, /extend job:<number> seconds:5 prompt:\"...\", "
                       "or /extend video:<an MP4 or WebM> prompt:\"what happens next\".")
EXTEND_HELP_TELEGRAM = ("Extend a video: the Extend button under it, reply /extend 5 what happens next to it, or send "
                        "an MP4 or WebM with the caption /extend 5 what happens next.")
EXTEND_OPTIONS = ("An extension takes the seconds to add, a prompt, and --seed, --steps, --fast, --negative, --cfg; "
                  "pictures, --loop and the variant are for new videos.")
EXTEND_NEEDS_PROMPT = "Write what happens next as the prompt, e.g. /extend 5 the cat jumps off the table."
EXTEND_ASK = ("Extending job {job}: reply to this message with the seconds to add and what happens next, "
              "e.g. \"5 the cat jumps\" (just \"5\" keeps the video's own prompt).")
EXTEND_USAGE_TELEGRAM = ("Reply /extend 5 what happens next to a video, or send an MP4 or WebM with the caption "
                         "/extend 5 what happens next.")
EXTEND_USAGE_DISCORD = "Attach a video (video:) or name one of the bot's jobs (job:) to extend."
EXTEND_ONE_SOURCE = "Give either a video or a job number to extend, not both."
NOT_A_VIDEO = "That file is not a video. Send an MP4 or WebM video to extend."
EXTEND_QUEUED = "Queued: the video will be extended."
OVER_UPLOAD_LIMIT = "\nThe video is larger than this chat's upload limit ({mb:g} MB), so it could not be sent."
REFUSED_AS_TOO_LARGE = "\nThe video ({mb:.1f} MB) was refused as too large for this chat, so it could not be sent."
EDIT_NOT_READ = ("Edits are not read: a job keeps what its message first said. To change it, cancel the job and "
                 "send it again.")
EXTEND_SECONDS = "Seconds takes a number, not {raw}."


def video_too_big(size: int, limit: int) -> str:
    return f"The video is {size / 1e6:.1f} MB; I can extend videos of up to {limit / 1e6:g} MB."


# ----- LoRAs ----------------------------------------------------------------------------------------------

LORA_HELP_DISCORD = "LoRAs: /animate ... lora1:<name> strength1:0.8 (up to 3; the names complete as you type)."
LORA_HELP_TELEGRAM = "LoRAs: a cat --lora name:0.8 (up to 3, each with its strength; default 1)."
EXTEND_LORAS = "An extension keeps the LoRAs of the video it continues; --lora is for new videos."
LORA_STRENGTH_ALONE = "strength{number} goes with lora{number}: pick the LoRA it is for."
NO_LORAS = "No LoRA files in {folder}. Put HunyuanVideo LoRAs there as NAME.safetensors."
LORA_CHECK_FAILED = "The LoRA check could not run: {why}"
ADMIN_USAGE_TELEGRAM = ("Usage: /admin loras (the LoRA files and whether each loads), /admin workers (each worker's "
                        "host, GPU, plan, speed and job).")


def lora_listing(folder, reports: list[dict]) -> str:
    """One line per file of `python -m engine.lora_check`: usable with the linears it changes, or refused."""
    lines = [f"LoRAs in {folder}:"]
    for report in reports:
        if report["ok"]:
            lines.append(f"{report['name']}: ok, {report['matched']} LoRA modules on {report['linears']} linears "
                         f"(sha256 {report['sha256'][:12]})")
        else:
            lines.append(f"{report['name']}: refused: {report['problem']}")
    return "\n".join(lines)


def workers_list(workers) -> str:
    """/admin workers: one line per live worker (storage/worker_info.py's WorkerInfo)."""
    if not workers:
        return "No worker is running: queued jobs wait until one starts."
    lines = []
    for w in workers:
        where = " · ".join(part for part in (w.host, w.gpu, f"plan {w.plan}" if w.plan else None) if part)
        speed = f"{w.seconds_per_step:.2f} s/step" if w.seconds_per_step else "no speed yet"
        doing = (f"job #{w.job_id}" if w.job_id else "starting up" if w.starting else
                 f"cannot render: {w.problem}" if w.problem else "idle")
        lines.append(f"{w.name}: {where or 'where unknown'}; {speed}; {doing}")
    return "\n".join(lines)
