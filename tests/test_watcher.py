"""The progress/delivery loop: throttled edits per chat, previews at once, delivery retried until it works."""

from __future__ import annotations

from helpers import picture_bytes

from bot.watcher import Frontend, Watcher
from storage.jobs import JobParams, NewJob, Progress
from storage.settings import Settings


async def test_edits_are_throttled_per_chat_but_new_previews_go_out_at_once(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d", max_queued_per_user=10))
    ids = [(await store.enqueue(NewJob("telegram", "chat", f"u{i}", "x", JobParams()), picture_bytes())).job_id
           for i in range(2)]
    for job_id in ids:
        await store.set_status_message(job_id, f"t:{job_id}")
    shown, delivered, failures = [], [], [1]

    async def show(job, text, preview):
        shown.append((job.id, text, preview))

    async def deliver(job):
        if failures:
            failures.pop()
            raise RuntimeError("network down")
        delivered.append(job.id)

    watcher = Watcher(store, Frontend("telegram", show, deliver, lambda job: 3600.0))
    await watcher.tick()
    assert [s[0] for s in shown] == [ids[0]]  # the second job shares the chat: it waits its turn
    await store.claim("w")
    await store.report_progress(ids[0], "w", Progress(1, 2, 3, 25))
    await watcher.tick()
    assert len(shown) == 1  # changed text, but the chat was edited moments ago
    await store.report_progress(ids[0], "w", Progress(1, 2, 25, 25, preview="/tmp/section_0001.gif"))
    await watcher.tick()
    assert shown[-1][0] == ids[0] and shown[-1][2] == "/tmp/section_0001.gif"  # a new preview goes out at once

    await store.complete(ids[0], "w", "v.mp4", {})
    await watcher.tick()  # delivery fails once: the job stays undelivered
    assert delivered == [] and [j.id for j in await store.undelivered("telegram")] == [ids[0]]
    await watcher.tick()
    assert delivered == [ids[0]] and await store.undelivered("telegram") == []
