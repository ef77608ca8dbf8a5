"""The Discord frontend against the fake Discord (REST + gateway), with a tiny-model worker behind the queue."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time

import pytest
from fake_discord import MANAGE_GUILD, FakeDiscord
from helpers import (
    picture_bytes,
    remove_input,
    stored_job_and_video,
    video_with_settings,
    wait_for,
    worker_env,
    worker_settings,
)
from PIL import Image
from worker_processes import run_worker, start_worker

from bot import discord_frontend
from bot.discord_frontend import DiscordBot
from bot.downloads import download_capped
from storage.jobs import JobParams, JobState, NewJob
from storage.video_metadata import MadeWith

OWNER, STRANGER, MODERATOR, ADMIN = 701, 702, 703, 900
UPLOAD_LIMIT = 9_000_000  # not a default anywhere: proves the limit comes from the interaction


class Env:
    """One fake Discord, one store, and a bot that can be stopped and started again."""

    def __init__(self, fake: FakeDiscord, settings, store):
        self.fake, self.settings, self.store = fake, settings, store
        self.bot: DiscordBot | None = None
        self.stop = self.task = self.worker = None

    async def start_bot(self) -> DiscordBot:
        self.bot = DiscordBot(self.settings, self.store)
        self.bot.watcher.poll = 0.2
        self.bot.edit_seconds = 0.3
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.bot.run(self.stop))
        await asyncio.wait_for(self.bot.ready.wait(), 20)
        await self.fake.wait_ready(20)
        return self.bot

    async def stop_bot(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)

    async def restart_bot(self, **setting_changes) -> DiscordBot:
        await self.stop_bot()
        self.settings = self.settings.model_copy(update=setting_changes)
        return await self.start_bot()

    def start_worker(self) -> None:
        self.worker = start_worker(self.store, self.settings)

    async def stop_worker(self) -> None:
        await self.worker.stop()
        self.worker = None

    def picture(self, data: bytes | None = None, name: str = "cat.png", content_type: str = "image/png") -> dict:
        return self.fake.upload(name, picture_bytes() if data is None else data, content_type)

    async def animate(self, user: int = OWNER, guild: bool = True, attachment: dict | None = None, **options):
        options.setdefault("prompt", "a cat turns its head")
        interaction = await self.fake.slash_command("animate", user, options,
                                                    attachments={"image": attachment or self.picture()}, guild=guild)
        await interaction.wait_response()
        return interaction

    async def animate_queued(self, job_id: int, **options):
        """/animate, once its job is in the queue: the bot enqueues after it has deferred its answer."""
        interaction = await self.animate(**options)
        await self.fake.wait_for(lambda: (m := interaction.original()) and f"Job {job_id}" in m.content)
        return interaction

    async def ephemeral_answer(self, interaction) -> str:
        """The text the person alone saw: the response itself, or a follow-up after a withdrawn defer."""
        def answer():
            if interaction.response and interaction.response["type"] == 4:
                return interaction.original()
            return next((m for m in interaction.followups() if m.ephemeral), None)
        message = await self.fake.wait_for(answer, 10)
        assert message.ephemeral
        return message.content


@pytest.fixture()
async def env(stores, tmp_path, tiny_models_dir):
    fake = FakeDiscord(guild_upload_limit=UPLOAD_LIMIT)
    await fake.start()
    fake.add_member(OWNER, name="owner")
    fake.add_member(STRANGER, name="stranger")
    fake.add_member(MODERATOR, name="moderator", permissions=MANAGE_GUILD)
    settings = worker_settings(
        tmp_path, tiny_models_dir, discord_token="fake-token", discord_api_url=fake.base_url,
        discord_guild_ids=str(fake.guild_id), discord_admin_user_ids=str(ADMIN), render_resolution=64,
        default_steps=2, lease_seconds=30.0, max_queued_per_user=2,
    )
    env = Env(fake, settings, await stores(settings))
    await env.start_bot()
    yield env
    try:
        if env.worker:
            await env.stop_worker()  # a worker process that crashed fails here, with its log
    finally:
        if not env.task.done():
            await env.stop_bot()
        await fake.stop()


def _video_message(fake: FakeDiscord, job_id: int):
    return next((m for m in fake.messages.values() if not m.deleted and any(
        a["filename"] == f"framepack_{job_id}.mp4" for a in m.attachments)), None)


async def _delivered(store, job_id: int, fake: FakeDiscord):
    async def check():
        return (await store.get(job_id)).delivered
    deadline = time.monotonic() + 120
    while not await check():
        assert time.monotonic() < deadline, "not delivered in time"
        await asyncio.sleep(0.1)


async def _with_status_message(store, job_id: int):
    """The job once the bot has stored its status message's id: it posts the message first, then stores it."""
    deadline = time.monotonic() + 10
    while (job := await store.get(job_id)).status_message is None:
        assert time.monotonic() < deadline, "the status message was never stored"
        await asyncio.sleep(0.01)
    return job


async def test_commands_are_synced_to_the_configured_guild(env):
    names = {c["name"] for c in env.fake.commands[env.fake.guild_id]}
    assert {"animate", "queue", "cancel", "help", "admin", "Animate this image", "Video info"} <= names
    animate = next(c for c in env.fake.commands[env.fake.guild_id] if c["name"] == "animate")
    assert [o["name"] for o in animate["options"]][:2] == ["image", "prompt"]


async def test_a_failed_command_sync_does_not_stop_the_bot(env, caplog):
    fake = env.fake
    fake.rate_limit_next("/commands", times=10, retry_after=0.01)  # discord.py gives up after 5 tries
    await env.restart_bot()
    assert "could not sync the commands" in caplog.text
    interaction = await fake.slash_command("help", STRANGER)  # the commands synced before are still there
    assert "FramePack" in await env.ephemeral_answer(interaction)


async def test_animate_to_video_reply_with_previews_and_reroll(env):
    fake, store = env.fake, env.store
    started = time.monotonic()
    interaction = await env.animate(prompt="a cat turns its head", seconds=3.6, seed=77)
    assert time.monotonic() - started < 3.0 and interaction.response["type"] == 5  # deferred in time
    status = await fake.wait_for(lambda: (m := interaction.original()) and "next in line" in m.content and m)
    assert "framepack:cancel:1" in status.custom_ids()
    job = await store.get(1)
    assert job.params.upload_limits == (UPLOAD_LIMIT,) and job.params.seed == 77 and job.chat_id == str(fake.channel_id)

    env.start_worker()
    await fake.wait_for(lambda: any(a["filename"].endswith(".gif") for a in status.attachments)
                        and "/3, step" in status.content, 120)
    gif = next(a for a in status.attachments if a["filename"].endswith(".gif"))
    assert gif["data"].startswith(b"GIF8")
    video = await fake.wait_for(lambda: _video_message(fake, 1), 120)
    await _delivered(store, 1, fake)
    assert video.content.startswith(f"<@{OWNER}>") and "seed 77" in video.content
    assert video.message_reference["message_id"] == str(status.id)
    mp4 = video.attachments[0]
    assert mp4["data"][4:8] == b"ftyp" and len(mp4["data"]) <= UPLOAD_LIMIT
    assert "framepack:reroll:1" in video.custom_ids()
    text, answer = await _video_info(env, fake.upload("v.mp4", mp4["data"], "video/mp4"))  # the delivered file
    assert 'Prompt: "a cat turns its head"' in text and "Seed 77, 3.6 s" in text
    assert "framepack:reroll:1" in answer.custom_ids()
    assert not status.attachments and not status.custom_ids() and "Done" in status.content  # tidied up

    fast = await env.animate(user=OWNER, seconds=1.0, fast=True)
    await fake.wait_for(lambda: (m := fast.original()) and "Job 2" in m.content)
    assert (await store.get(2)).params.teacache == 0.15  # the "fast" option asks the worker for TeaCache

    reroll = await fake.click("framepack:reroll:1", STRANGER, video)
    await reroll.wait_response()
    second = await fake.wait_for(lambda: (m := reroll.original()) and "Job 3" in m.content and m)
    assert "framepack:cancel:3" in second.custom_ids()
    rerolled = await store.get(3)
    assert rerolled.user_id == str(STRANGER) and rerolled.prompt == job.prompt and rerolled.params.seconds == 3.6
    assert rerolled.params.seed != 77


async def test_bad_inputs_are_ephemeral_and_create_nothing(env, monkeypatch):
    fake, store = env.fake, env.store
    fetched = []

    async def counted(session, url, *args):
        fetched.append(url)
        return await download_capped(session, url, *args)

    monkeypatch.setattr(discord_frontend, "download_capped", counted)
    downloads = fetched.__len__

    pdf = env.picture(b"%PDF-1.4 not a picture", "paper.pdf", "application/pdf")
    assert "not a picture" in await env.ephemeral_answer(await env.animate(attachment=pdf))
    huge = env.picture(b"\x89PNG" + b"\0" * 40_000, "huge.png")
    await store.set_limit("max_image_bytes", "30000", "test")
    assert "the limit is 0.03 MB" in await env.ephemeral_answer(await env.animate(attachment=huge))
    await store.set_limit("max_image_bytes", "30000000", "test")
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")  # 64 megapixels in 64 KB
    bomb = env.picture(buffer.getvalue(), "bomb.png")
    assert "megapixels" in await env.ephemeral_answer(await env.animate(attachment=bomb))
    assert downloads() == 0  # all three refused from what Discord declared, before downloading
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, format="PNG")  # 400 megapixels in 0.4 MB
    bigger = env.picture(buffer.getvalue(), "bigger.png")
    assert "megapixels" in await env.ephemeral_answer(await env.animate(attachment=bigger))

    truncated = env.picture(picture_bytes()[:300], "cut.png")
    answer = await env.ephemeral_answer(await env.animate(attachment=truncated))
    assert "damaged or truncated" in answer and fetched[-1].endswith("/cut.png")
    assert "longer than 1000 characters" in await env.ephemeral_answer(await env.animate(prompt="waves " * 500))
    assert "between 1 and 120" in await env.ephemeral_answer(await env.animate(seconds=500.0))
    await store.set_limit("max_seconds", "10", "test")
    assert "between 1 and 10 " in await env.ephemeral_answer(await env.animate(seconds=30.0))
    assert "seed must be" in await env.ephemeral_answer(await env.animate(seed=-5))
    assert await store.queue_length() == 0
    assert not [m for m in fake.messages.values() if not m.ephemeral and not m.deleted and m.author_id != OWNER]

    for number in (1, 2):  # each queued before the next is asked for
        await env.animate_queued(number, seconds=1.0)
    assert "the limit is 2" in await env.ephemeral_answer(await env.animate(seconds=1.0))
    assert await store.queue_length() == 2


async def test_cancel_button_owner_and_stranger_and_queue(env):
    fake, store = env.fake, env.store
    first = await env.animate(seconds=1.0)
    status = await fake.wait_for(lambda: (m := first.original()) and "Job 1" in m.content and m)
    await env.animate_queued(2, seconds=1.0)
    queue = await fake.slash_command("queue", OWNER)
    text = await env.ephemeral_answer(queue)
    assert "Job 1" in text and "Job 2" in text and "2 job(s) waiting" in text

    denied = await fake.click("framepack:cancel:1", STRANGER, status)
    assert "Only the person who asked" in await env.ephemeral_answer(denied)
    assert (await store.get(1)).state is JobState.QUEUED
    allowed = await fake.click("framepack:cancel:1", OWNER, status)
    assert await env.ephemeral_answer(allowed) == "Cancelled."
    assert (await store.get(1)).state is JobState.CANCELLED
    await _delivered(store, 1, fake)
    notice = await fake.wait_for(lambda: next((m for m in fake.messages.values()
                                               if "Job 1 was cancelled" in m.content and m.id != status.id), None))
    assert notice.content.startswith(f"<@{OWNER}>")

    by_command = await fake.slash_command("cancel", STRANGER, {"job": 2})
    assert "Only the person who asked" in await env.ephemeral_answer(by_command)
    by_admin = await fake.slash_command("cancel", ADMIN, {"job": 2})
    assert await env.ephemeral_answer(by_admin) == "Cancelled."
    missing = await fake.slash_command("cancel", OWNER, {"job": 99})
    assert await env.ephemeral_answer(missing) == "No such job."


async def test_admin_commands_are_checked_by_the_bot(env):
    fake, store = env.fake, env.store
    refused = await fake.slash_command("admin", STRANGER, subcommand="limits")
    assert "Only the bot's admins" in await env.ephemeral_answer(refused)
    refused = await fake.slash_command("admin", STRANGER, {"name": "max_seconds", "value": "5"},
                                       subcommand="set-limit")
    assert "Only the bot's admins" in await env.ephemeral_answer(refused)
    assert (await store.get_limits()).max_seconds == 120

    shown = await fake.slash_command("admin", ADMIN, subcommand="limits")
    assert "max_seconds: 120 s" in await env.ephemeral_answer(shown)
    shown = await fake.slash_command("admin", MODERATOR, subcommand="limits")  # a server's moderator may look
    assert "max_seconds: 120 s" in await env.ephemeral_answer(shown)
    # ...but the limits are every server's: only the listed admins change them.
    refused = await fake.slash_command("admin", MODERATOR, {"name": "max_seconds", "value": "30"},
                                       subcommand="set-limit")
    assert "only the bot's own admins" in await env.ephemeral_answer(refused)
    assert (await store.get_limits()).max_seconds == 120
    changed = await fake.slash_command("admin", ADMIN, {"name": "max_seconds", "value": "30"},
                                       subcommand="set-limit")
    assert "max_seconds: 30 s" in await env.ephemeral_answer(changed)
    bad = await fake.slash_command("admin", ADMIN, {"name": "max_seconds", "value": "lots"},
                                   subcommand="set-limit")
    assert "must be a number" in await env.ephemeral_answer(bad)
    unknown = await fake.slash_command("admin", ADMIN, {"name": "max_fun", "value": "1"}, subcommand="set-limit")
    assert "Unknown limit" in await env.ephemeral_answer(unknown)
    assert (await store.get_limits()).max_seconds == 30

    help_ = await fake.slash_command("help", STRANGER)
    assert "up to 30 s" in await env.ephemeral_answer(help_)

    await env.restart_bot(discord_manage_server_admins=False)  # Manage Server gives nothing now
    refused = await fake.slash_command("admin", MODERATOR, subcommand="limits")
    assert "Only the bot's admins" in await env.ephemeral_answer(refused)
    assert (await store.get_limits()).max_seconds == 30


async def test_global_commands_reach_direct_messages(env):
    """Without DISCORD_GUILD_IDS the commands are global, so they work in DMs too, with the DM upload limit."""
    fake, store = env.fake, env.store
    await env.restart_bot(discord_guild_ids="")
    assert {"animate", "admin"} <= {c["name"] for c in fake.commands[None]}
    interaction = await env.animate(guild=False, seconds=1.0)
    await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content)
    job = await store.get(1)
    assert job.params.upload_limits == (10 * 1024 * 1024,) and job.chat_id == str(fake.dm_channel_id(OWNER))
    dm = await fake.slash_command("admin", MODERATOR, {"name": "max_seconds", "value": "60"},
                                  subcommand="set-limit", guild=False)  # Manage Server means nothing in a DM
    assert "Only the bot's admins" in await env.ephemeral_answer(dm)
    assert (await store.get_limits()).max_seconds == 120


async def test_context_menu_opens_a_modal_and_queues(env):
    fake, store = env.fake, env.store
    post = fake.post_user_message(STRANGER, "look at this", [env.picture()])
    opened = await fake.message_command("Animate this image", OWNER, post)
    response = await opened.wait_response()
    assert response["type"] == 9
    submitted = await fake.submit_modal(response["data"]["custom_id"], OWNER,
                                        {"prompt": "the sea glitters --f1", "seconds": "2"})
    await submitted.wait_response()
    await fake.wait_for(lambda: (m := submitted.original()) and "Job 1" in m.content)
    job = await store.get(1)
    assert job.user_id == str(OWNER) and job.prompt == "the sea glitters"
    assert job.params.variant == "f1" and job.params.seconds == 2.0

    text_only = fake.post_user_message(STRANGER, "no picture here")
    refused = await fake.message_command("Animate this image", OWNER, text_only)
    assert "no picture" in await env.ephemeral_answer(refused)
    opened = await fake.message_command("Animate this image", OWNER, post)
    response = await opened.wait_response()
    bad = await fake.submit_modal(response["data"]["custom_id"], OWNER, {"prompt": "waves", "seconds": "soon"})
    assert "Seconds takes a number" in await env.ephemeral_answer(bad)
    opened = await fake.message_command("Animate this image", OWNER, post)
    response = await opened.wait_response()
    guided = await fake.submit_modal(response["data"]["custom_id"], OWNER, {"prompt": "waves --at 2s", "seconds": ""})
    assert "need their pictures" in await env.ephemeral_answer(guided)
    assert await store.queue_length() == 1


async def test_deleted_progress_message_and_rate_limits_do_not_stop_the_job(env):
    fake, store = env.fake, env.store
    interaction = await env.animate(seconds=2.4)
    status = await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content and m)
    fake.delete_message(status.id)
    fake.rate_limit_next("/messages", times=2)
    env.start_worker()
    fresh = await fake.wait_for(lambda: next((m for m in fake.messages.values() if not m.deleted
                                              and m.ever_said("Job 1: section") and m.id != status.id), None), 120)
    assert (await store.get(1)).status_message == str(fresh.id)
    await fake.wait_for(lambda: _video_message(fake, 1), 120)
    await _delivered(store, 1, fake)


async def test_a_preview_reaches_a_new_message_and_the_channel_whole(env, tmp_path):
    """A failed edit has already read its GIF: the next attempt must upload it again, not an empty file."""
    fake, store = env.fake, env.store
    gif = tmp_path / "preview.gif"
    Image.new("RGB", (32, 24), (10, 120, 200)).save(gif)
    first = await env.animate(seconds=1.0)
    deleted = await fake.wait_for(lambda: (m := first.original()) and "Job 1" in m.content and m)
    fake.delete_message(deleted.id)
    await env.bot.show_progress(await _with_status_message(store, 1), "Job 1: section 1/1", str(gif))
    fresh = fake.messages[int((await store.get(1)).status_message)]
    assert fresh.id != deleted.id and fresh.attachments[0]["data"] == gif.read_bytes()

    second = await env.animate(seconds=1.0)
    status = await fake.wait_for(lambda: (m := second.original()) and "Job 2" in m.content and m)
    fake.expire_token(second)  # the edit through the token fails; the channel edit follows
    await env.bot.show_progress(await _with_status_message(store, 2), "Job 2: section 1/1", str(gif))
    assert status.attachments[0]["data"] == gif.read_bytes()

async def test_an_interaction_token_that_stops_working_falls_back_to_the_channel(env):
    fake, store = env.fake, env.store
    interaction = await env.animate(seconds=2.4)  # two sections: progress shows over several watcher ticks
    status = await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content and m)
    fake.token_lifetime = 0.0  # every webhook call with this token now gets 401 Invalid Webhook Token
    env.start_worker()
    await fake.wait_for(lambda: status.ever_said("Job 1: section"), 120)
    assert fake.requests_to(f"PATCH /api/v10/channels/{fake.channel_id}/messages/{status.id}")
    await fake.wait_for(lambda: _video_message(fake, 1), 120)
    await _delivered(store, 1, fake)

async def test_the_bot_carries_on_after_the_gateway_drops(env):
    fake = env.fake
    for resume in (True, False):  # a resumed session, then a fresh one (discord.py waits 5 s to identify again)
        await fake.drop_connection(resume=resume)
        await fake.wait_ready(30)
        interaction = await fake.slash_command("help", STRANGER)
        assert "FramePack" in await env.ephemeral_answer(interaction)

async def test_restart_delivers_finished_jobs_and_resumes_progress(env):
    fake, store = env.fake, env.store
    done = await env.animate(seconds=1.0)
    done_status = await fake.wait_for(lambda: (m := done.original()) and "Job 1" in m.content and m)
    waiting = await env.animate(user=STRANGER, seconds=2.4)
    waiting_status = await fake.wait_for(lambda: (m := waiting.original()) and "Job 2" in m.content and m)
    await env.stop_bot()

    await run_worker(store, env.settings, max_jobs=1)  # the bot is down: job 1 finishes unseen, job 2 waits
    assert (await store.get(1)).state is JobState.DONE and (await store.get(2)).state is JobState.QUEUED
    assert not (await store.get(1)).delivered and _video_message(fake, 1) is None

    await env.start_bot()  # a new process: no interaction tokens, only what storage holds
    video = await fake.wait_for(lambda: _video_message(fake, 1), 60)
    assert video.message_reference["message_id"] == str(done_status.id)
    await _delivered(store, 1, fake)
    edits_before = waiting_status.edits
    env.start_worker()  # job 2 renders under the new bot, which edits the status message the old one sent
    await fake.wait_for(lambda: waiting_status.edits > edits_before and waiting_status.ever_said("Job 2: section"),
                        120)
    assert fake.requests_to(f"PATCH /api/v10/channels/{fake.channel_id}/messages/{waiting_status.id}")
    await fake.wait_for(lambda: _video_message(fake, 2), 120)


async def test_without_send_permission_the_video_comes_as_a_follow_up_or_a_dm(env):
    fake, store = env.fake, env.store
    fake.forbidden_channels.add(fake.channel_id)  # slash commands still work there; channel posts do not
    fresh = await env.animate(seconds=1.0)
    await fake.wait_for(lambda: (m := fresh.original()) and "Job 1" in m.content)
    stale = await env.animate(seconds=1.0)
    # the bot keeps the interaction once its answer is back, a moment after the fake has it
    await fake.wait_for(lambda: (m := stale.original()) and "Job 2" in m.content and 2 in env.bot.interactions)
    env.bot.interactions.pop(2)  # as if its 15-minute token had run out
    env.start_worker()
    follow_up = await fake.wait_for(lambda: _video_message(fake, 1), 120)
    assert follow_up.channel_id == fake.channel_id and follow_up.interaction_id == fresh.id
    direct = await fake.wait_for(lambda: _video_message(fake, 2), 120)
    assert direct.channel_id == fake.dm_channel_id(OWNER) and "framepack:reroll:2" in direct.custom_ids()
    await _delivered(store, 2, fake)


async def test_serve_runs_the_discord_frontend_with_a_worker_process(tmp_path, tiny_models_dir):
    """The product path: `framepack-bot serve` with a token, a worker subprocess, the fake Discord."""
    fake = FakeDiscord(guild_upload_limit=UPLOAD_LIMIT)
    await fake.start()
    settings = worker_settings(tmp_path, tiny_models_dir)
    env = {**worker_env(settings), "DISCORD_TOKEN": "fake-token", "DISCORD_API_URL": fake.base_url,
           "DISCORD_GUILD_IDS": str(fake.guild_id), "RENDER_RESOLUTION": "64", "DEFAULT_STEPS": "2",
           "ENGINE_WORKERS": "1"}
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=env, stdout=log.open("wb"),
                             stderr=subprocess.STDOUT)
    try:
        await fake.wait_ready(60)
        await fake.wait_for(lambda: fake.commands.get(fake.guild_id), 30)
        interaction = await fake.slash_command("animate", OWNER, {"prompt": "a lantern sways", "seconds": 1.0},
                                               attachments={"image": fake.upload("lantern.png", picture_bytes(),
                                                                                 "image/png")})
        assert (await interaction.wait_response())["type"] == 5
        video = await fake.wait_for(lambda: _video_message(fake, 1), 180)
        assert video.content.startswith(f"<@{OWNER}>") and len(video.attachments[0]["data"]) <= UPLOAD_LIMIT
    finally:
        serve.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(serve.wait, 90)
        await fake.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "discord: commands synced" in text and "No chat frontend" not in text


async def test_a_server_moderator_acts_on_that_servers_jobs_only(env):
    """Manage Server in one server is no right over another server's jobs, nor over DMs."""
    fake, store = env.fake, env.store
    here = await env.animate(seconds=1.0)
    await fake.wait_for(lambda: (m := here.original()) and "Job 1" in m.content)
    assert (await store.get(1)).guild_id == str(fake.guild_id)
    elsewhere = NewJob("discord", "555", str(STRANGER), "another server's", JobParams(seconds=1.0),
                       guild_id="1300000000000000009")
    direct = NewJob("discord", "556", str(STRANGER), "a DM's", JobParams(seconds=1.0))
    for job in (elsewhere, direct):
        await store.enqueue(job, picture_bytes())
    for job_id in (2, 3):
        refused = await fake.slash_command("cancel", MODERATOR, {"job": job_id})
        assert "Only the person who asked" in await env.ephemeral_answer(refused)
        assert (await store.get(job_id)).state is JobState.QUEUED
    allowed = await fake.slash_command("cancel", MODERATOR, {"job": 1})
    assert await env.ephemeral_answer(allowed) == "Cancelled."
    by_admin = await fake.slash_command("cancel", ADMIN, {"job": 2})  # the listed admins act everywhere
    assert await env.ephemeral_answer(by_admin) == "Cancelled."


async def test_undeliverable_results_are_given_up_with_a_record(env):
    """No channel permission, no token, DMs closed: one try, the reason kept, no retry loop."""
    fake, store = env.fake, env.store
    interaction = await env.animate(seconds=1.0)
    # the bot keeps the interaction once its answer is back, a moment after the fake has it
    await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content and 1 in env.bot.interactions)
    env.bot.interactions.clear()  # as after a restart: no fresh interaction token
    fake.forbid_channel(fake.channel_id)
    fake.forbid_channel(fake.dm_channel_id(OWNER))  # DMs closed too
    video = env.settings.data_dir / "elsewhere.mp4"
    video.write_bytes(picture_bytes())  # any file will do: it is never uploaded
    await store.claim("w")
    await store.complete(1, "w", str(video), {})

    async def given_up():
        job = await store.get(1)
        return job if job.delivered else None

    job = await wait_for(given_up, timeout=30)
    assert job.delivery_error.startswith("no channel, follow-up or direct message reaches the person")
    tries = len(fake.requests_to(f"POST /api/v10/channels/{fake.channel_id}/messages"))
    await asyncio.sleep(2)
    assert len(fake.requests_to(f"POST /api/v10/channels/{fake.channel_id}/messages")) == tries


async def _video_info(env, attachment: dict):
    """Apps > Video info on a message carrying `attachment`: (the answer the asker alone sees, its message)."""
    post = env.fake.post_user_message(STRANGER, "", [attachment])
    asked = await env.fake.message_command("Video info", OWNER, post)
    text = await env.ephemeral_answer(asked)
    return text, next(m for m in asked.followups() if m.ephemeral)


async def test_video_info_shows_the_settings_and_animate_again_queues_them_with_a_new_seed(env, tmp_path):
    fake, store = env.fake, env.store
    job_id, video = await stored_job_and_video(store, tmp_path, "discord")
    text, answer = await _video_info(env, fake.upload("fox.mp4", video, "video/mp4"))
    assert 'Prompt: "a fox runs"' in text and "Negative prompt: \"blur\"" in text and "Seed 5, 2 s" in text
    assert "CFG 3" in text and f"job {job_id}" in text and "Animate again:" not in text
    assert f"framepack:reroll:{job_id}" in answer.custom_ids()

    again = await fake.click(f"framepack:reroll:{job_id}", OWNER, answer)
    await again.wait_response()
    await fake.wait_for(lambda: (m := again.original()) and f"Job {job_id + 1}" in m.content)
    first, second = await store.get(job_id), await store.get(job_id + 1)
    assert (second.prompt, second.user_id, second.params.cfg) == (first.prompt, str(OWNER), 3.0)
    assert second.params.seed != first.params.seed

    remove_input(store, job_id)
    text, answer = await _video_info(env, fake.upload("fox.mp4", video, "video/mp4"))
    assert "no longer stored" in text and not answer.custom_ids()


async def test_video_info_refuses_what_it_cannot_read(env, tmp_path):
    fake = env.fake
    text, _ = await _video_info(env, fake.upload("plain.mp4", video_with_settings(tmp_path), "video/mp4"))
    assert "does not say how it was made" in text
    text, _ = await _video_info(env, fake.upload("fake.mp4", b"GIF89a" + bytes(64), "video/mp4"))
    assert "not an MP4 video" in text
    post = fake.post_user_message(STRANGER, "", [env.picture()])
    assert "no video attached" in await env.ephemeral_answer(await fake.message_command("Video info", OWNER, post))
    cli_made = video_with_settings(tmp_path, MadeWith(prompt="a fox", seed=1, variant="f1", steps=2, seconds=1.0))
    text, answer = await _video_info(env, fake.upload("cli.mp4", cli_made, "video/mp4"))
    assert "framepack-bot animate" in text and "the command line" in text and not answer.custom_ids()
