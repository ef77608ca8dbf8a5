"""Logging for every process (serve, workers, animate): one format, and no secret in any line.

Bot tokens travel in request URLs (httpx logs those at INFO) and in some libraries' error texts (an
invalid Telegram token is quoted in its own error), and a database password sits in DATABASE_URL. A
filter on the root handlers replaces each secret, wherever it shows up in a line or a traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from storage.url_secrets import MASK as REDACTED  # one mask for a secret, in a URL or in a log line
from storage.url_secrets import url_passwords

NOISY_LOGGERS = ("httpx", "httpcore")  # one INFO line per HTTP request, with the URL (and the token in it)


def secrets_of(settings) -> list[str]:
    """Every secret the settings (and the environment) hold, and the parts that can appear alone."""
    found = []
    for token in (getattr(settings, "discord_token", None), getattr(settings, "telegram_token", None),
                  os.environ.get("HF_TOKEN"), getattr(settings, "storage_secret_access_key", None),
                  os.environ.get("AWS_SECRET_ACCESS_KEY")):
        if token:
            found.append(token)
            found.extend(part for part in token.split(":")[1:] if len(part) >= 8)  # Telegram's id:secret
    for url in (getattr(settings, "database_url", None), getattr(settings, "storage_url", None)):
        found.extend(url_passwords(url))
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, traceback and stack with the secrets replaced."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = str(record.msg)
        record.msg, record.args = redact(message, self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def configure_logging(settings=None, fmt: str = "%(asctime)s %(name)s %(levelname)s %(message)s",
                      level: int = logging.INFO) -> None:
    """`level` and up to stderr, HTTP clients quiet, and every secret of `settings` kept out of the output."""
    logging.basicConfig(level=level, format=fmt)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if settings is None:
        return
    redacting = RedactingFilter(secrets_of(settings))
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, RedactingFilter)]
        handler.addFilter(redacting)
