"""Capped downloads against a real HTTP server: honest sizes, lying sizes, chunked streams, slow servers."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bot.downloads import download_capped
from storage.inputs import InputError

BODY = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture()
async def server():
    served = {"chunks": 0}

    async def exact(request):
        return web.Response(body=BODY, content_type="image/png")

    async def chunked(request):  # no Content-Length: the cap must hold while reading
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(1000):
            served["chunks"] += 1
            await response.write(BODY[:10_000])
        return response

    async def slow(request):
        await asyncio.sleep(2)
        return web.Response(body=b"late")

    async def missing(request):
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/exact", exact)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{port}", served
    await runner.cleanup()


async def test_a_file_within_the_cap_arrives_whole(server):
    session, base, _ = server
    assert await download_capped(session, f"{base}/exact", len(BODY)) == BODY


async def test_a_declared_size_over_the_cap_is_refused(server):
    session, base, _ = server
    with pytest.raises(InputError, match="larger than the limit"):
        await download_capped(session, f"{base}/exact", len(BODY) - 1)


async def test_a_stream_without_a_size_stops_at_the_cap(server):
    session, base, served = server
    with pytest.raises(InputError, match="larger than the limit"):
        await download_capped(session, f"{base}/chunked", 50_000)
    assert served["chunks"] < 1000  # it stopped reading instead of taking the whole 10 MB


async def test_slow_and_failing_servers_give_a_clear_message(server):
    session, base, _ = server
    with pytest.raises(InputError, match="longer than 0.5 s"):
        await download_capped(session, f"{base}/slow", 1000, timeout=0.5)
    with pytest.raises(InputError, match="HTTP 404"):
        await download_capped(session, f"{base}/missing", 1000)
