"""Prompt options typed after a caption: `a cat dances --seconds 10 --seed 42 --f1 --steps 20`."""

from __future__ import annotations

import random
import re
import shlex
from dataclasses import dataclass

from storage.inputs import InputError
from storage.jobs import JobParams
from storage.settings import Settings

FAST_TEACACHE = 0.15  # the FramePack demos' TeaCache threshold: about 2x, with small visible changes
_OPTION = re.compile(r"(?:^|\s)--[a-z]")


@dataclass(frozen=True)
class Request:
    prompt: str
    seconds: float | None = None
    seed: int | None = None
    steps: int | None = None
    variant: str | None = None
    fast: bool = False  # TeaCache: about twice as fast, with small visible changes


def parse_caption(text: str) -> Request:
    """Split a caption into the prompt and its options; raise InputError on a bad option."""
    text = (text or "").strip()
    match = _OPTION.search(text)
    prompt, rest = (text[: match.start()].strip(), text[match.start():]) if match else (text, "")
    try:
        words = shlex.split(rest)
    except ValueError:
        raise InputError("The options could not be read: check the quotes.") from None
    values: dict = {}
    i = 0
    while i < len(words):
        word = words[i].lower()
        if word in ("--f1", "--original"):
            values["variant"] = word[2:]
            i += 1
            continue
        if word == "--fast":
            values["fast"] = True
            i += 1
            continue
        if word not in ("--seconds", "--seed", "--steps", "--variant"):
            raise InputError(f"Unknown option {words[i]}. Options: --seconds N, --seed N, --steps N, --f1, --fast.")
        if i + 1 >= len(words):
            raise InputError(f"{words[i]} needs a value.")
        raw = words[i + 1]
        try:
            if word == "--seconds":
                values["seconds"] = float(raw)
            elif word == "--variant":
                values["variant"] = raw.lower()
            else:
                values[word[2:]] = int(raw)
        except ValueError:
            raise InputError(f"{words[i]} takes a number, not {raw!r}.") from None
        i += 2
    if "seed" in values and not 0 <= values["seed"] < 2**63:
        raise InputError("--seed must be a non-negative number.")
    return Request(prompt=prompt, **values)


def new_seed() -> int:
    return random.SystemRandom().randrange(0, 2**31)


def job_params(request: Request, settings: Settings, upload_limit: int, seed: int | None = None) -> JobParams:
    """The job's parameters: what the person asked for, the configured defaults for the rest."""
    if seed is None:
        seed = request.seed if request.seed is not None else new_seed()
    return JobParams(
        seconds=request.seconds if request.seconds is not None else settings.default_seconds,
        variant=request.variant or "original",
        seed=seed,
        steps=request.steps if request.steps is not None else settings.default_steps,
        resolution=settings.render_resolution,
        upload_limits=(upload_limit,),
        teacache=FAST_TEACACHE if request.fast else 0.0,
    )
