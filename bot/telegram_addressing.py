"""Which Telegram captions are for this bot. In a group several bots read the same messages: a command is ours
when it names no bot or names ours (`/animate@our_bot`), and a mention is ours only as a whole word
(`@our_bot`, in any case; not `@our_bot_beta`). Telegram itself routes text commands so; captions are read here."""

from __future__ import annotations

import re

_COMMAND = re.compile(r"/(?P<name>\w+)(?:@(?P<bot>\w+))?(?=\s|$)(?P<rest>.*)", re.DOTALL)


def _mention(username: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w@])@{re.escape(username)}(?!\w)", re.IGNORECASE)


def mentions(text: str, username: str) -> bool:
    return _mention(username).search(text) is not None


def without_mentions(text: str, username: str) -> str:
    """`text` with our mentions taken out, and the spaces around each, so the prompt reads as if never there."""
    return re.sub(rf"[ \t]*{_mention(username).pattern}[ \t]*", " ", text, flags=re.IGNORECASE).strip()


def command_text(text: str, command: str, username: str) -> str | None:
    """What follows `/command` (or `/command@username`) at the start of `text`, stripped; None when `text` does
    not start with that command, or the command names another bot."""
    match = _COMMAND.match(text.strip())
    if match is None or match["name"].lower() != command:
        return None
    if match["bot"] is not None and match["bot"].lower() != username.lower():
        return None
    return match["rest"].strip()
