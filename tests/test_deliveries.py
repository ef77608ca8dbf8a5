"""Deliveries exactly once across frontend processes, on both backends and both platforms: two Telegram frontends
of one bot token, or two Discord frontends of one bot, (each with its own store connection, as two processes or hosts
would have) against the fake Bot API or the fake Discord deliver a batch of finished jobs; every video is posted
once, also when one frontend is stopped and started again mid-way."""

from __future__ import annotations

import asyncio
import collections
import re

import pytest
from fake_discord import FakeDiscord
from fake_telegram import FakeTelegram
from helpers import picture_bytes, video_with_settings, wait_for, worker_settings

from bot.discord_frontend import DiscordBot
from bot.telegram_frontend import TelegramBot
from storage.jobs import JobParams, NewJob
from storage.store import open_store

TOKEN = "123456:TEST-token"
JOBS = 12


class Telegram:
    """The fake Bot API, one private chat per job; its record of sendVideo calls says what was posted."""

    async def start(self) -> dict:
        self.fake = FakeTelegram(TOKEN)
        return {"telegram_token": TOKEN, "telegram_api_url": await self.fake.start()}

    def new_job(self, index: int) -> NewJob:
        chat = str(7000 + index)
        return NewJob("telegram", chat, chat, "a cat", JobParams(seconds=1.2))

    def bot(self, settings, store) -> TelegramBot:
        return TelegramBot(settings, store)

    def videos_posted(self, jobs: dict[int, NewJob]) -> collections.Counter:
        job_in_chat = {job.chat_id: job_id for job_id, job in jobs.items()}
        return collections.Counter(job_in_chat[str(call["chat_id"])] for call in self.fake.calls_to("sendVideo"))

    async def stop(self) -> None:
        await self.fake.stop()


class Discord:
    """The fake Discord, every job from its own member in the guild's channel; the fake's stored messages (their
    framepack_<job>.mp4 attachments) say what was posted."""

    async def start(self) -> dict:
        self.fake = FakeDiscord()
        await self.fake.start()
        return {"discord_token": "fake-token", "discord_api_url": self.fake.base_url,
                "discord_guild_ids": str(self.fake.guild_id)}

    def new_job(self, index: int) -> NewJob:
        return NewJob("discord", str(self.fake.channel_id), str(8000 + index), "a cat", JobParams(seconds=1.2),
                      guild_id=str(self.fake.guild_id))

    def bot(self, settings, store) -> DiscordBot:
        return DiscordBot(settings, store)

    def videos_posted(self, jobs: dict[int, NewJob]) -> collections.Counter:
        """Job id -> how many videos of it were posted in the job's channel, addressed to its person."""
        posted = collections.Counter()
        for message in self.fake.messages.values():
            for attachment in message.attachments:
                if named := re.fullmatch(r"framepack_(\d+)\.mp4", attachment["filename"]):
                    job = jobs[int(named[1])]
                    if message.channel_id == int(job.chat_id) and message.content.startswith(f"<@{job.user_id}>"):
                        posted[int(named[1])] += 1
        return posted

    async def stop(self) -> None:
        await self.fake.stop()


async def _finished_jobs(store, tmp_path, jobs: list[NewJob]) -> dict[int, NewJob]:
    """`jobs` queued, rendered and done, with a video each; returns job id -> its NewJob."""
    video = video_with_settings(tmp_path)
    finished = {}
    for new_job in jobs:
        job_id = (await store.enqueue(new_job, picture_bytes())).job_id
        job = await store.claim("w1")
        path = store.files.video_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(video)
        assert await store.complete(job_id, "w1", str(path), {}, lease=job.lease)
        finished[job_id] = new_job
    return finished


class Frontend:
    """One frontend "process": its own store connection and bot, recording which jobs it posted."""

    def __init__(self, settings, platform: Telegram | Discord, name: str, posted: list[tuple[str, int]]):
        self.settings, self.platform, self.name, self.posted = settings, platform, name, posted

    async def start(self) -> Frontend:
        self.store = await open_store(self.settings)
        self.bot = self.platform.bot(self.settings, self.store)
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


@pytest.mark.parametrize("platform", [Telegram, Discord], ids=["telegram", "discord"])
async def test_two_frontends_post_every_video_exactly_once_across_a_restart(tmp_path, tiny_models_dir, database_url,
                                                                            platform):
    chat = platform()
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=database_url, max_queued_per_user=50,
                               **await chat.start())
    setup = await open_store(settings)
    frontends = []
    try:
        jobs = await _finished_jobs(setup, tmp_path, [chat.new_job(index) for index in range(JOBS)])
        posted: list[tuple[str, int]] = []
        frontends = [await Frontend(settings, chat, "a", posted).start(),
                     await Frontend(settings, chat, "b", posted).start()]
        await wait_for(lambda: _at_least(posted, 3), timeout=60, every=0.01)
        await frontends[0].close()  # "a" goes down mid-way (its current post finishes) and comes back
        frontends[0] = await Frontend(settings, chat, "a-restarted", posted).start()
        await wait_for(lambda: _all_delivered(setup, jobs), timeout=60)
        await asyncio.sleep(0.5)  # a double post would come now
        per_job = chat.videos_posted(jobs)
        assert per_job == collections.Counter(jobs.keys()), per_job
        by_process = collections.Counter(name for name, _ in posted)
        print(f"{JOBS} videos, each posted once: {dict(by_process)}")
        assert len(posted) == JOBS and len({job for _, job in posted}) == JOBS
        assert len(by_process) >= 2  # both processes delivered some
    finally:
        for frontend in frontends:
            await frontend.close()
        await setup.close()
        await chat.stop()


async def test_a_dead_processes_delivery_claim_runs_out_and_another_process_takes_it(tmp_path, tiny_models_dir,
                                                                                    database_url):
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=database_url)
    first, second = await open_store(settings), await open_store(settings)
    try:
        (job_id,) = await _finished_jobs(first, tmp_path, [Telegram().new_job(0)])
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


async def _all_delivered(store, jobs: dict[int, NewJob]) -> bool:
    return all([(await store.get(job_id)).delivered for job_id in jobs])
