"""Discord: extending videos through the fake Discord, with a tiny-model worker behind the queue. The Extend
button and its form, /extend with a job or a video attachment, and every bad video refused with a message that
only the person sees, creating nothing."""

from __future__ import annotations

import re

import pytest
from fake_discord import FakeDiscord
from helpers import picture_bytes, wait_for, worker_settings
from test_discord import OWNER, STRANGER, UPLOAD_LIMIT, Env, _delivered, _video_message
from test_extend import write_video

from engine.video import concat_segments, probe
from storage.extension_rules import KEPT_LATENTS
from storage.jobs import Extends, JobParams, JobState, NewJob


@pytest.fixture()
async def env(stores, tmp_path, tiny_models_dir):
    fake = FakeDiscord(guild_upload_limit=UPLOAD_LIMIT)
    await fake.start()
    fake.add_member(OWNER, name="owner")
    fake.add_member(STRANGER, name="stranger")
    settings = worker_settings(
        tmp_path, tiny_models_dir, discord_token="fake-token", discord_api_url=fake.base_url,
        discord_guild_ids=str(fake.guild_id), render_resolution=64, default_steps=2, lease_seconds=30.0,
        max_queued_per_user=5, max_extend_video_bytes=1_000_000,
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


async def _finished(store, user: int = OWNER, chat: str | None = None) -> int:
    """A delivered render with its kept latents, as a worker and the bot leave it (no render: these tests only
    queue)."""
    job = NewJob("discord", chat or "1", str(user), "a cat", JobParams(seconds=1.2, steps=2, variant="f1"))
    job_id = (await store.enqueue(job, picture_bytes())).job_id
    assert (await store.claim("w1")).id == job_id
    store.files.work_dir(job_id).mkdir(parents=True)
    (store.files.work_dir(job_id) / KEPT_LATENTS).write_bytes(b"kept")
    assert await store.complete(job_id, "w1", str(store.files.video_path(job_id)), {})
    await store.mark_delivered(job_id)
    return job_id


async def _extend(env, user: int = OWNER, video: dict | None = None, **options):
    attachments = {"video": video} if video is not None else None
    interaction = await env.fake.slash_command("extend", user, options, attachments=attachments)
    await interaction.wait_response()
    return interaction


async def test_the_extend_button_asks_and_extends_the_delivered_video_then_extend_extends_that(env):
    fake, store = env.fake, env.store
    assert "extend" in {c["name"] for c in fake.commands[fake.guild_id]}
    env.start_worker()
    await env.animate(prompt="a cat turns its head", variant="f1", seconds=1.2, seed=77)
    first = await fake.wait_for(lambda: _video_message(fake, 1), 120)
    assert {"framepack:reroll:1", "framepack:extend:1"} <= set(first.custom_ids())

    clicked = await fake.click("framepack:extend:1", STRANGER, first)  # anyone in the channel, as with re-roll
    response = await clicked.wait_response()
    assert response["type"] == 9  # the form
    submitted = await fake.submit_modal(response["data"]["custom_id"], STRANGER, {"seconds": "1.2", "prompt": ""})
    await submitted.wait_response()
    status = await fake.wait_for(lambda: (m := submitted.original()) and "Job 2" in m.content and m)
    assert "framepack:cancel:2" in status.custom_ids()
    job = await store.get(2)
    assert job.extends == Extends(1, None) and job.user_id == str(STRANGER)
    assert (job.prompt, job.params.seed, job.params.variant) == ("a cat turns its head", 77, "f1")

    video = await fake.wait_for(lambda: _video_message(fake, 2), 120)
    await _delivered(store, 2, fake)
    assert video.content.startswith(f"<@{STRANGER}>") and "1.2 s added to job 1" in video.content
    assert video.message_reference["message_id"] == str(status.id)
    assert {"framepack:reroll:2", "framepack:extend:2"} <= set(video.custom_ids())
    mp4 = video.attachments[0]["data"]
    assert mp4[4:8] == b"ftyp" and len(mp4) <= UPLOAD_LIMIT
    assert "Done" in status.content and not status.custom_ids()

    again = await _extend(env, job=2, seconds=1.2, prompt="the cat sleeps")  # an extension of the extension
    await fake.wait_for(lambda: (m := again.original()) and "Job 3" in m.content)
    third = await wait_for(lambda: _done(store, 3), timeout=120)
    assert third.extends == Extends(2, None) and third.prompt == "the cat sleeps"
    assert probe(third.video).frames == 37 + 2 * 36


async def _done(store, job_id: int):
    job = await store.get(job_id)
    return job if job.state is JobState.DONE else None


async def test_extend_with_a_video_attachment_queues_and_delivers_the_longer_video(env, tmp_path):
    fake, store = env.fake, env.store
    clip = tmp_path / "holiday.mp4"
    write_video(clip, frames=40)
    interaction = await _extend(env, video=fake.upload("holiday.mp4", clip.read_bytes(), "video/mp4"),
                                prompt="the waves roll in", seconds=1.2)
    await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content)
    job = await store.get(1)
    assert job.extends == Extends(None, "holiday.mp4") and job.prompt == "the waves roll in"
    assert store.files.source_video_path(1).read_bytes() == clip.read_bytes()
    env.start_worker()
    video = await fake.wait_for(lambda: _video_message(fake, 1), 120)
    assert "added to holiday.mp4" in video.content
    job = await store.get(1)
    assert probe(job.video).frames == 40 + 36


async def test_every_bad_request_is_refused_to_the_person_alone_and_creates_nothing(env, tmp_path):
    fake, store = env.fake, env.store
    good = tmp_path / "good.mp4"
    write_video(good, frames=50)
    data = good.read_bytes()
    faststart = concat_segments([good], tmp_path / "faststart.mp4").read_bytes()
    short, mpeg4 = tmp_path / "short.mp4", tmp_path / "old.mp4"
    write_video(short, frames=10)
    write_video(mpeg4, frames=40, codec="mpeg4")
    mine = await _finished(store, chat=str(fake.channel_id))
    elsewhere = await _finished(store, user=STRANGER, chat=str(fake.dm_channel_id(STRANGER)))
    removed = await _finished(store, chat=str(fake.channel_id))
    await store.mark_files_removed([removed])
    queued = await store.queue_length()

    def upload(name: str, content: bytes, mime: str = "video/mp4") -> dict:
        return fake.upload(name, content, mime)

    videos = {
        "not a video (declared)": (upload("paper.pdf", b"%PDF-1.4", "application/pdf"), "not a video"),
        "not a video (its bytes)": (upload("words.mp4", b"just words, nothing more"), "not a video I can read"),
        "a picture": (upload("cat.webm", picture_bytes(), "video/webm"), "not a video I can read"),
        "too big": (upload("big.mp4", data + bytes(1_000_000)), "I can extend videos of up to 1 MB"),
        "truncated": (upload("cut.mp4", data[: len(data) // 2]), "damaged or cut short"),
        "cut short behind its index": (upload("cut2.mp4", faststart[: len(faststart) * 2 // 3]),
                                       "damaged or cut short: .* frames where"),
        "too short": (upload("short.mp4", short.read_bytes()), "at least 33 frames"),
        "unsupported codec": (upload("old.mp4", mpeg4.read_bytes()), "encoded as mpeg4"),
    }
    for name, (attachment, message) in videos.items():
        answer = await env.ephemeral_answer(await _extend(env, video=attachment, prompt="the waves roll in"))
        assert re.search(message, answer), (name, answer)
    store.settings = store.settings.model_copy(update={"max_extend_video_seconds": 1.0})  # read at enqueue
    answer = await env.ephemeral_answer(await _extend(env, video=upload("long.mp4", data), prompt="waves"))
    assert "the limit is 1 seconds" in answer

    requests = {
        "no source": (dict(prompt="waves"), "Attach a video"),
        "two sources": (dict(job=mine, prompt="waves"), "not both"),
        "no prompt for a video": (dict(seconds=2.0), "Write what happens next"),
        "no such job": (dict(job=999), "There is no job 999"),
        "someone else's job from another chat": (dict(job=elsewhere), "another chat"),
        "removed files": (dict(job=removed), "deleted after the bot's keeping period"),
    }
    for name, (options, message) in requests.items():
        video = upload("good.mp4", data) if name in ("two sources", "no prompt for a video") else None
        answer = await env.ephemeral_answer(await _extend(env, video=video, **options))
        assert message in answer, (name, answer)
    await store.set_limit("max_seconds", "10", "test")
    assert "between 1 and 10 " in await env.ephemeral_answer(await _extend(env, job=mine, seconds=30.0))

    post = fake.post_user_message(OWNER, "")  # the button on a video whose files are gone: no form, a reason
    fake.messages[post.id].components = [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "Extend", "custom_id": f"framepack:extend:{removed}"}]}]
    assert "deleted after" in await env.ephemeral_answer(await fake.click(f"framepack:extend:{removed}", OWNER, post))
    fake.messages[post.id].components[0]["components"][0]["custom_id"] = f"framepack:extend:{mine}"
    opened = await (await fake.click(f"framepack:extend:{mine}", OWNER, post)).wait_response()
    bad = await fake.submit_modal(opened["data"]["custom_id"], OWNER, {"seconds": "soon", "prompt": ""})
    assert "Seconds takes a number" in await env.ephemeral_answer(bad)
    opened = await (await fake.click(f"framepack:extend:{mine}", OWNER, post)).wait_response()
    looped = await fake.submit_modal(opened["data"]["custom_id"], OWNER, {"seconds": "2", "prompt": "x --loop"})
    assert "are for new videos" in await env.ephemeral_answer(looped)

    assert await store.queue_length() == queued
    assert not [m for m in fake.messages.values() if not m.ephemeral and not m.deleted and m.author_id != OWNER]


async def test_a_video_the_bot_made_attached_again_continues_from_its_job(env):
    """Downloaded and attached to /extend: the video's metadata names its job, so the owner's /extend continues
    from the kept latents (exactly); someone in another chat (their DM) may not extend that job, so their copy is
    extended from its frames, with the job's prompt as the default."""
    fake, store = env.fake, env.store
    await env.restart_bot(discord_guild_ids="")  # global commands, so that /extend works in a DM too
    env.start_worker()
    await env.animate(prompt="a cat waves", variant="f1", seconds=1.2, seed=77)
    delivered = (await fake.wait_for(lambda: _video_message(fake, 1), 120)).attachments[0]["data"]
    await _delivered(store, 1, fake)
    await env.stop_worker()  # the extensions are only queued here

    mine = await _extend(env, video=fake.upload("cat.mp4", delivered, "video/mp4"), seconds=1.2)
    await fake.wait_for(lambda: (m := mine.original()) and "Job 2" in m.content)
    job = await store.get(2)
    assert job.extends == Extends(1, None) and (job.prompt, job.params.seed) == ("a cat waves", 77)
    assert not store.files.source_video_path(2).exists()  # nothing re-encoded: the kept latents are the source

    dm = fake.dm_channel_id(STRANGER)
    theirs = await fake.slash_command("extend", STRANGER, {"seconds": 1.2}, guild=False, attachments={
        "video": fake.upload("cat.mp4", delivered, "video/mp4", channel_id=dm)})
    await theirs.wait_response()
    await fake.wait_for(lambda: (m := theirs.original()) and "Job 3" in m.content)
    job = await store.get(3)
    assert job.extends == Extends(None, "cat.mp4") and job.prompt == "a cat waves" and job.chat_id == str(dm)
    assert store.files.source_video_path(3).read_bytes() == delivered
