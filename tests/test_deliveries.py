"""Deliveries exactly once across frontend processes, on both backends: two Telegram frontends of one bot token
(each with its own store connection, as two processes or hosts would have) against the fake Bot API deliver a
batch of finished jobs; every video is posted once, also when one frontend is stopped and started again mid-way."""

from __future__ import annotations

import asyncio
import collections

from fake_telegram import FakeTelegram
from helpers import picture_bytes, video_with_settings, wait_for, worker_settings

from bot.telegram_frontend import TelegramBot
from storage.jobs import JobParams, NewJob
from storage.store import open_store

TOKEN = "123456:TEST-token"
JOBS = 12


async def _finished_jobs(store, tmp_path, count: int) -> dict[int, int]:
    """`count` done jobs with a video each, one chat per job; returns job id -> chat id."""
    video = video_with_settings(tmp_path)
    chats = {}
    for index in range(count):
        chat = 7000 + index
        job_id = (await store.enqueue(NewJob("telegram", str(chat), str(chat), "a cat", JobParams(seconds=1.2)),
                                      picture_bytes())).job_id
        job = await store.claim("w1")
        path = store.files.video_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(video)
        assert await store.complete(job_id, "w1", str(path), {}, lease=job.lease)
        chats[job_id] = chat
    return chats


class Frontend:
    """One frontend "process": its own store connection and bot, recording which jobs it posted."""

    def __init__(self, settings, name: str, posted: list[tuple[str, int]]):
        self.settings, self.name, self.posted = settings, name, posted

    async def start(self) -> Frontend:
        self.store = await open_store(self.settings)
        self.bot = TelegramBot(self.settings, self.store)
        self.bot.watcher.poll = 0.1
        deliver = self.bot.watcher.frontend.deliver

        async def recording_deliver(job):
            await deliver(job)
            self.posted.append((self.name, job.id))
            await asyncio.sleep(0.05)  # a slower upload: the two processes interleave

        self.bot.watcher.frontend.deliver = recording_deliver
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.bot.run(self.stop))
        return self

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.store.close()


async def test_two_frontends_post_every_video_exactly_once_across_a_restart(tmp_path, tiny_models_dir, database_url):
    fake = FakeTelegram(TOKEN)
    url = await fake.start()
    settings = worker_settings(tmp_path, tiny_models_dir, telegram_token=TOKEN, telegram_api_url=url,
                               database_url=database_url, max_queued_per_user=50)
    setup = await open_store(settings)
    frontends = []
    try:
        chats = await _finished_jobs(setup, tmp_path, JOBS)
        posted: list[tuple[str, int]] = []
        frontends = [await Frontend(settings, "a", posted).start(), await Frontend(settings, "b", posted).start()]
        await wait_for(lambda: _at_least(posted, 3), timeout=60, every=0.01)
        await frontends[0].close()  # "a" goes down mid-way (its current post finishes) and comes back
        frontends[0] = await Frontend(settings, "a-restarted", posted).start()
        await wait_for(lambda: _all_delivered(setup, chats), timeout=60)
        await asyncio.sleep(0.5)  # a double post would come now
        per_chat = collections.Counter(int(call["chat_id"]) for call in fake.calls_to("sendVideo"))
        assert per_chat == collections.Counter(chats.values()), per_chat
        by_process = collections.Counter(name for name, _ in posted)
        print(f"{JOBS} videos, each posted once: {dict(by_process)}")
        assert len(posted) == JOBS and len({job for _, job in posted}) == JOBS
        assert len(by_process) >= 2  # both processes delivered some
    finally:
        for frontend in frontends:
            await frontend.close()
        await setup.close()
        await fake.stop()


async def test_a_dead_processes_delivery_claim_runs_out_and_another_process_takes_it(tmp_path, tiny_models_dir,
                                                                                    database_url):
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=database_url)
    first, second = await open_store(settings), await open_store(settings)
    try:
        (job_id,) = await _finished_jobs(first, tmp_path, 1)
        assert await first.claim_delivery(job_id, "host-a-1", 0.3)
        assert not await second.claim_delivery(job_id, "host-b-2", 30)  # held: not posted twice
        assert await second.undelivered("telegram") == []  # nor listed for another process meanwhile
        assert await first.claim_delivery(job_id, "host-a-1", 0.3)  # the holder keeps it
        await asyncio.sleep(0.4)  # host-a-1 died holding it: the claim runs out
        assert [j.id for j in await second.undelivered("telegram")] == [job_id]
        assert await second.claim_delivery(job_id, "host-b-2", 30)
        assert not await first.claim_delivery(job_id, "host-a-1", 30)
        await second.mark_delivered(job_id)
        assert not await first.claim_delivery(job_id, "host-a-3", 30)  # delivered: nobody claims it again
        assert await second.undelivered("telegram") == []
    finally:
        await first.close()
        await second.close()


async def _at_least(posted: list, count: int) -> bool:
    return len(posted) >= count


async def _all_delivered(store, chats: dict[int, int]) -> bool:
    return all([(await store.get(job_id)).delivered for job_id in chats])
