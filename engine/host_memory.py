"""The host's RAM as the kernel reports it, read without torch (the serve process that starts the workers never
imports it)."""

from __future__ import annotations


def _meminfo() -> dict[str, int]:
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, _, value = line.partition(":")
            fields[name] = int(value.split()[0]) * 1024
    return fields


def mem_available_bytes() -> int:
    """What the kernel could give now without swapping (MemAvailable; MemFree on kernels without it)."""
    fields = _meminfo()
    return fields.get("MemAvailable", fields.get("MemFree", 0))


def own_anonymous_bytes() -> int:
    """This process's private memory (RssAnon): held already, so a budget taken now may count it."""
    with open("/proc/self/status") as status:
        return next((int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:")), 0)
