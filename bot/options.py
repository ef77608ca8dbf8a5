"""Prompt options typed after a caption: `a cat dances --seconds 10 --seed 42 --f1 --steps 20`, and the ones
that direct the motion: `--end`, `--at 3s`, `--end-strength 0.8`, `--loop`, `--negative "..."`, `--cfg 3`;
and LoRAs: `--lora name:0.8` (repeatable, up to 3)."""

from __future__ import annotations

import random
import re
import shlex
from dataclasses import dataclass

from storage.inputs import InputError, quoted
from storage.jobs import GuidePictures, JobLora, JobParams
from storage.limits import MAX_KEYFRAMES, Limits
from storage.settings import Settings

FAST_TEACACHE = 0.15  # the FramePack demos' TeaCache threshold: about 2x, with small visible changes
_OPTION = re.compile(r"(?:^|\s)--[a-z]", re.IGNORECASE)


@dataclass(frozen=True)
class Request:
    prompt: str
    seconds: float | None = None
    seed: int | None = None
    steps: int | None = None
    variant: str | None = None
    fast: bool = False  # TeaCache: about twice as fast, with small visible changes
    negative: str = ""
    cfg: float | None = None
    cfg_rescale: float | None = None
    loop: bool = False
    end: bool = False  # the last picture of an album is the end picture
    end_strength: float | None = None
    keyframe_at: tuple[float, ...] = ()  # seconds of each keyframe picture, in the album's order
    loras: tuple[tuple[str, float], ...] = ()  # (name, strength) as typed; bot/loras.py checks them against LORA_DIR


def parse_caption(text: str) -> Request:
    """Split a caption into the prompt and its options; raise InputError on a bad option."""
    text = (text or "").strip()
    dashed = _DASHED_OPTION.sub("--", text)
    if dashed != text:
        try:
            return _parse(dashed)
        except InputError:
            pass  # a dash in the prose after all ("a knock —at the door"): read as typed
    return _parse(text)


def _parse(text: str) -> Request:
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
        if word in _FLAGS:
            values.update(_FLAGS[word])
            i += 1
            continue
        if not word.startswith("-"):  # prose after the options: "--seconds 5 a cat", "a cat --f1 dancing"
            raise InputError(f"{quoted(words[i])} is not an option: write the prompt first and the options after "
                             "it, e.g. a cat dances --seconds 5")
        if word not in _VALUED:
            raise InputError(f"Unknown option {quoted(words[i])}. Options: {OPTIONS_HELP}")
        if i + 1 >= len(words):
            raise InputError(f"{quoted(words[i])} needs a value.")
        _read_value(word, words[i + 1], values)
        i += 2
    if "seed" in values and not 0 <= values["seed"] < 2**63:
        raise InputError("--seed must be a non-negative number.")
    return Request(prompt=prompt, **values)


OPTIONS_HELP = ("--seconds N, --seed N, --steps N, --f1, --fast, --end, --at Ns, --end-strength X, --loop, "
                "--negative \"...\", --cfg N, --cfg-rescale X, --lora NAME:STRENGTH.")
_FLAGS = {"--f1": {"variant": "f1"}, "--original": {"variant": "original"}, "--fast": {"fast": True},
          "--loop": {"loop": True}, "--end": {"end": True}}
_VALUED = ("--seconds", "--seed", "--steps", "--variant", "--negative", "--cfg", "--cfg-rescale", "--end-strength",
           "--at", "--lora")
# Phone keyboards turn a typed "--" into a dash ("—seconds 5"): before an option's name it still means the option.
_NAMES = sorted((name[2:] for name in [*_FLAGS, *_VALUED]), key=len, reverse=True)
_DASHED_OPTION = re.compile(rf"(?:^|(?<=\s))[\u2014\u2013](?=(?:{'|'.join(_NAMES)})(?:\s|$))", re.IGNORECASE)


def _read_value(option: str, raw: str, values: dict) -> None:
    """One valued option into `values`, or an InputError that says what it takes."""
    if option == "--lora":  # `--lora style:0.8`, repeated; checked against LORA_DIR by bot/loras.py
        values["loras"] = (*values.get("loras", ()), parse_lora(raw))
        return
    try:
        if option in ("--seconds", "--cfg", "--cfg-rescale", "--end-strength"):
            values[option[2:].replace("-", "_")] = float(raw)
        elif option == "--variant":
            values["variant"] = raw.lower()
        elif option == "--negative":
            values["negative"] = raw.strip()
        elif option == "--at":  # `--at 3s`, repeated, or `--at 2s,4s`
            values["keyframe_at"] = (*values.get("keyframe_at", ()),
                                     *(parse_seconds(part) for part in raw.split(",") if part.strip()))
        else:
            values[option[2:]] = int(raw)
    except ValueError:
        what = "seconds, e.g. --at 3s" if option == "--at" else "a number"
        raise InputError(f"{option} takes {what}, not {quoted(raw)}.") from None


def parse_lora(raw: str) -> tuple[str, float]:
    """`name:0.8` or `name` (strength 1); an InputError for a strength that is not a number."""
    name, sep, strength = raw.strip().rpartition(":")
    if not sep:
        return raw.strip(), 1.0
    try:
        return name.strip(), float(strength.replace(",", "."))
    except ValueError:
        raise InputError(f"--lora takes NAME or NAME:STRENGTH, e.g. --lora {name.strip()[:40] or 'style'}:0.8, "
                         f"not {quoted(raw)}.") from None


def parse_seconds(raw: str) -> float:
    """`3s`, `3` or `2.5s`; a ValueError otherwise."""
    return float(raw.strip().lower().removesuffix("s").replace(",", "."))


MAX_ALBUM = 1 + MAX_KEYFRAMES  # the start picture and four more: keyframes, the last of them maybe the end


def album_guides(request: Request, pictures: int) -> GuidePictures:
    """What each picture of an album is. The first is the start; the others are keyframes, one `--at` time
    each in order, and the last is the end picture when it has no `--at` of its own (or with `--end`)."""
    after_start = pictures - 1
    times = request.keyframe_at
    if after_start == 0:
        if times or request.end:
            raise InputError("--at and --end need an album: send the start picture, the keyframes and the end "
                             f"picture together, 2 to {MAX_ALBUM} photos, with the caption on them.")
        return GuidePictures()
    if pictures > MAX_ALBUM:
        raise InputError(f"An album takes 2 to {MAX_ALBUM} photos: the start picture, keyframes and the end picture. "
                         f"This one has {pictures}.")
    end = request.end or len(times) == after_start - 1
    keyframes = after_start - 1 if end else after_start
    if len(times) != keyframes:
        raise InputError(
            f"This album has {after_start} photo(s) after the start picture and {len(times)} --at time(s). "
            "Each keyframe photo takes one --at time, in order (e.g. --at 3s), and the last photo is the end "
            "picture when it has none (or say --end)."
        )
    return GuidePictures(end=end, keyframes=tuple(times))


def new_seed() -> int:
    return random.SystemRandom().randrange(0, 2**31)


def job_params(request: Request, settings: Settings, upload_limit: int, seed: int | None = None,
               loras: tuple[JobLora, ...] = (), limits: Limits | None = None) -> JobParams:
    """The job's parameters: what the person asked for, the configured defaults for the rest; `loras` are
    request.loras once checked (bot/loras.py). With the admins' `limits`, a default they lowered the limit under
    (or a variant they switched off) gives way to the limit, where it would refuse every request that names none."""
    if seed is None:
        seed = request.seed if request.seed is not None else new_seed()
    seconds, steps, variant = settings.default_seconds, settings.default_steps, "original"
    if limits is not None:
        seconds, steps = min(seconds, limits.max_seconds), min(steps, limits.max_steps)
        variant = variant if variant in limits.allowed_variants else limits.allowed_variants[0]
    return JobParams(
        seconds=request.seconds if request.seconds is not None else seconds,
        variant=request.variant or variant,
        seed=seed,
        steps=request.steps if request.steps is not None else steps,
        resolution=settings.render_resolution,
        upload_limits=(upload_limit,),
        teacache=FAST_TEACACHE if request.fast else 0.0,
        negative_prompt=request.negative,
        cfg=request.cfg if request.cfg is not None else 1.0,
        cfg_rescale=request.cfg_rescale if request.cfg_rescale is not None else 0.0,
        end_strength=request.end_strength if request.end_strength is not None else 1.0,
        loop=request.loop,
        loras=loras,
    )
