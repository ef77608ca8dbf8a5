"""Limits that admins change at runtime: what each one is, its bounds, and parsing of typed values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from storage.inputs import InputError, quoted

VARIANTS = ("original", "f1")
MAX_KEYFRAMES = 4  # Discord's keyframe command takes 4 attachments; a Telegram album holds start + 4
SWITCHES = ("end_frame", "timed_prompts", "cfg", "loop")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


@dataclass(frozen=True)
class Limits:
    max_seconds: float
    max_steps: int
    max_queued_per_user: int
    max_image_pixels: int
    max_image_bytes: int
    allowed_variants: tuple[str, ...]
    # Directing the motion: each feature can be switched off; 0 keyframes switches keyframes off.
    end_frame: bool = True
    max_keyframes: int = MAX_KEYFRAMES
    timed_prompts: bool = True
    cfg: bool = True  # real CFG and the negative prompt (twice the render time)
    loop: bool = True

    def with_value(self, name: str, value) -> Limits:
        return Limits(**{**asdict(self), name: value})

    def describe(self) -> dict[str, str]:
        """Each limit as a person reads it."""
        return {
            "max_seconds": f"{self.max_seconds:g} s",
            "max_steps": str(self.max_steps),
            "max_queued_per_user": str(self.max_queued_per_user),
            "max_image_pixels": f"{self.max_image_pixels / 1e6:g} megapixels",
            "max_image_bytes": f"{self.max_image_bytes / 1e6:g} MB",
            "allowed_variants": ", ".join(self.allowed_variants),
            **{name: "on" if getattr(self, name) else "off" for name in SWITCHES},
            "max_keyframes": str(self.max_keyframes),
        }


LIMIT_NAMES = tuple(f.name for f in fields(Limits))

# Hard bounds: what the engine can do at all, whatever an admin types.
BOUNDS = {
    "max_seconds": (1.0, 120.0),
    "max_steps": (1, 100),
    "max_queued_per_user": (0, 1000),
    "max_image_pixels": (65_536, 200_000_000),
    "max_image_bytes": (10_000, 500_000_000),
    "max_keyframes": (0, MAX_KEYFRAMES),
}


def parse_variants(raw: str) -> list[str]:
    names = [v.strip().lower() for v in raw.replace(" ", ",").split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise InputError(f"allowed_variants takes a comma list of {', '.join(VARIANTS)}; got {quoted(raw)}.")
    return list(dict.fromkeys(names))


def parse_limit(name: str, raw: str):
    """The typed value for `name`, or an InputError that says what is allowed."""
    name = name.strip().lower().replace("-", "_")
    if name not in LIMIT_NAMES:
        raise InputError(f"Unknown limit {quoted(name)}. Limits: {', '.join(LIMIT_NAMES)}.")
    if name == "allowed_variants":
        return name, tuple(parse_variants(raw))
    if name in SWITCHES:
        word = raw.strip().lower()
        if word not in _ON + _OFF:
            raise InputError(f"{name} is on or off, not {quoted(raw)}.")
        return name, word in _ON
    low, high = BOUNDS[name]
    kind = float if isinstance(low, float) else int
    try:
        value = kind(raw.strip().replace("_", ""))
    except ValueError:
        kind_name = "number" if kind is float else "whole number"
        raise InputError(f"{name} must be a {kind_name}, not {quoted(raw)}.") from None
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, not {value:g}.")
    return name, value
