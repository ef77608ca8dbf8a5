"""The host's RAM as the kernel reports it, read without torch (the serve process that starts the workers never
imports it)."""

from __future__ import annotations

import contextlib


def _kib_fields(path: str) -> dict[str, int]:
    """The `Name:  1234 kB` lines of a /proc file, in bytes (its other lines are skipped)."""
    fields = {}
    with open(path) as lines:
        for line in lines:
            name, _, value = line.partition(":")
            number, _, unit = value.strip().partition(" ")
            if unit == "kB":
                fields[name] = int(number) * 1024
    return fields


def mem_available_bytes() -> int:
    """What the kernel could give now without swapping (MemAvailable; MemFree on kernels without it)."""
    fields = _kib_fields("/proc/meminfo")
    return fields.get("MemAvailable", fields.get("MemFree", 0))


def process_memory_bytes(pid: int | str = "self") -> dict[str, int]:
    """A process's memory figures from /proc/<pid>/status (VmHWM: peak resident, RssAnon: private...) in
    bytes; {} once the process has gone."""
    with contextlib.suppress(OSError):
        return _kib_fields(f"/proc/{pid}/status")
    return {}


def own_anonymous_bytes() -> int:
    """This process's private memory (RssAnon): held already, so a budget taken now may count it."""
    return process_memory_bytes().get("RssAnon", 0)
