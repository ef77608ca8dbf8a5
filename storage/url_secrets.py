"""The secrets a connection URL can hold, found the way libpq finds them, for masking and log redaction.

urllib's split stops the user part at a '#' or '?' and knows nothing of `?password=`; libpq takes everything up
to the first '@' that comes before any '/' as `user:password`, and a `password` parameter as well. So a password
with a '#' in it, or given as a parameter, passed urllib by unmasked. Read here as libpq reads it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def split_credentials(url: str) -> tuple[str, str | None, str | None, str]:
    """(scheme with "://", user, password, the rest: hosts, database and parameters). User and password as
    written (percent-encoded); None where absent."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "", None, None, url
    at, slash = rest.find("@"), rest.find("/")
    if at < 0 or (0 <= slash < at):
        return scheme + separator, None, None, rest
    user, colon, password = rest[:at].partition(":")
    return scheme + separator, user, password if colon else None, rest[at + 1:]


def url_passwords(url: str | None) -> list[str]:
    """Every password `url` holds, as written and decoded: either form can turn up in a library's message."""
    if not url:
        return []
    _, _, password, rest = split_credentials(url)
    written = ([password] if password else []) + [m[2] for m in _PASSWORD_PARAMETER.finditer(rest) if m[2]]
    return sorted({form for secret in written for form in (secret, unquote(secret))}, key=len, reverse=True)


def masked_url(url: str) -> str:
    """`url` as a person may see it: every password replaced by ***."""
    scheme, user, password, rest = split_credentials(url)
    rest = _PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", rest)
    if user is None:
        return scheme + rest
    return f"{scheme}{user}{':' + MASK if password is not None else ''}@{rest}"


def bad_hosts(url: str) -> str | None:
    """What is wrong with the host list of a postgresql:// URL (libpq takes "host:port,host:port"), or None."""
    hosts = split_credentials(url)[3].split("/", 1)[0].split("?", 1)[0]
    for host in filter(None, hosts.split(",")):
        if host.startswith("["):
            address, bracket, tail = host[1:].partition("]")
            if not bracket or not address or (tail and not tail.startswith(":")):
                return "has an IPv6 host without its closing ]"
            port = tail[1:]
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if ":" in host and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65_535):
            return "has a port that is not a number from 1 to 65535"
    return None
