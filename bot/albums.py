"""Telegram albums: one message per picture, sharing a media_group_id, with no marker for the last one.

The collector keeps each group's messages until none has come for a short quiet time, then hands the
whole album over, in the order it was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.5  # the parts of an album come in one burst, normally in one getUpdates answer


class AlbumCollector:
    def __init__(self, on_album: Callable[[list], Awaitable[None]], quiet_seconds: float = QUIET_SECONDS):
        self.on_album = on_album
        self.quiet_seconds = quiet_seconds
        self.groups: dict[str, list] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task] = set()  # held so that a running album is not garbage-collected

    def add(self, group_id: str, message) -> None:
        """One part of album `group_id`; the quiet time starts again."""
        self.groups.setdefault(group_id, []).append(message)
        timer = self.timers.pop(group_id, None)
        if timer is not None:
            timer.cancel()
        self.timers[group_id] = asyncio.get_running_loop().call_later(self.quiet_seconds, self._flush, group_id)

    def _flush(self, group_id: str) -> None:
        self.timers.pop(group_id, None)
        messages = sorted(self.groups.pop(group_id, []), key=lambda m: m.message_id)
        task = asyncio.get_running_loop().create_task(self._handle(messages))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, messages: list) -> None:
        try:
            await self.on_album(messages)
        except Exception:  # a handler's own errors are answered there; this keeps a bug from going unseen
            log.exception("telegram: handling an album failed")
