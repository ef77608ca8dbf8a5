"""Downloading what a person attached: never more bytes than the limit, never longer than a timeout."""

from __future__ import annotations

import asyncio

import aiohttp

from storage.inputs import InputError

CHUNK = 256 * 1024


async def download_capped(session: aiohttp.ClientSession, url: str, max_bytes: int, timeout: float = 60.0,
                          what: str = "picture") -> bytes:
    """The file at `url`, or InputError when it is larger than `max_bytes` or cannot be fetched in time.

    The size is checked from Content-Length when the server sends one, and again while reading, so a
    lying header or a chunked stream cannot push more than `max_bytes` into memory.
    """
    too_big = InputError(f"The {what} is larger than the limit of {max_bytes / 1e6:g} MB.")
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise InputError(f"The {what} could not be downloaded (HTTP {response.status}); try sending it again.")
            if response.content_length is not None and response.content_length > max_bytes:
                raise too_big
            data = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise too_big
            return bytes(data)
    except asyncio.TimeoutError:
        raise InputError(f"Downloading the {what} took longer than {timeout:g} s; try again.") from None
    except aiohttp.ClientError as error:
        raise InputError(f"The {what} could not be downloaded ({type(error).__name__}); try again.") from None
