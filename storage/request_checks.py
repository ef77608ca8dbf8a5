"""The checks a request passes before any backend stores it: the same rules for SQLite and PostgreSQL."""

from __future__ import annotations

import errno

from storage.direction_rules import check_direction
from storage.extension_rules import check_extension_request
from storage.inputs import InputError, check_prompt, load_image, quoted
from storage.jobs import GuidePictures, JobPictures, NewJob
from storage.limits import VARIANTS, Limits
from storage.settings import Settings


def check_request(job: NewJob, limits: Limits, settings: Settings) -> None:
    """Raises InputError with the person's reason for a request over the limits."""
    p = job.params
    if job.extends is not None:  # first: its own words for what an extension cannot take
        check_extension_request(job, limits)
    if p.variant not in VARIANTS:
        raise InputError(f"Unknown variant {quoted(p.variant)}; the variants are {', '.join(VARIANTS)}.")
    if not 0 <= p.seed < 2**63:
        raise InputError("The seed must be a whole number from 0 to 2^63-1.")
    if not 0.0 <= p.teacache <= 1.0:
        raise InputError("The TeaCache threshold must be between 0 and 1.")
    if p.variant not in limits.allowed_variants:
        raise InputError(f"The {p.variant} variant is switched off here; use {', '.join(limits.allowed_variants)}.")
    if not 1 <= p.seconds <= limits.max_seconds:
        raise InputError(f"The duration must be between 1 and {limits.max_seconds:g} seconds.")
    if not 1 <= p.steps <= limits.max_steps:
        raise InputError(f"Steps must be between 1 and {limits.max_steps}.")
    check_prompt(job.prompt, settings.max_prompt_chars)
    check_direction(job.prompt, p, job.guides, limits, settings.max_prompt_chars)


def check_pictures_match(guides: GuidePictures, pictures: JobPictures) -> None:
    """The request names the pictures it carries: a frontend bug otherwise, never a person's."""
    if (pictures.end is not None) != guides.end or len(pictures.keyframes) != len(guides.keyframes):
        raise ValueError("the job's guides do not match the pictures given")


def check_pictures(guides: GuidePictures, pictures: JobPictures, limits: Limits) -> None:
    """Every picture through the start picture's checks; a bad one's message says which picture it is."""
    named = [("", pictures.start)]
    if pictures.end is not None:
        named.append(("The end picture: ", pictures.end))
    named += [(f"The keyframe at {at:g}s: ", data) for at, data in zip(guides.keyframes, pictures.keyframes,
                                                                          strict=True)]
    for name, data in named:
        try:
            load_image(data, limits.max_image_pixels, limits.max_image_bytes)
        except InputError as error:
            raise InputError(f"{name}{error}") from None


def storage_trouble(error: OSError) -> str:
    """What a person reads when the bot could not store their job: no path, no error text."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The bot's server is out of disk space right now, so it cannot take new videos. Try again later."
    return "The bot could not store your picture just now (a problem on its server). Try again in a while."
