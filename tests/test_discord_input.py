"""Discord requests that go wrong on the way: input whose refusal quotes a long value, a long /queue, a failure
after the public "thinking" reply, a status Discord would not show. Each gets a clear answer for the person alone,
and a job that was queued stays queued and gets its status. No worker: the jobs stay queued."""

from __future__ import annotations

import io

import pytest
from fake_discord import DiscordError
from helpers import picture_bytes, wait_for
from PIL import Image
from test_discord import ADMIN, OWNER, env  # noqa: F401  (the fake Discord)

from bot.discord_frontend import SOMETHING_WRONG, UNPOSTED
from storage.jobs import JobParams, NewJob

ORIGINAL = "/messages/@original"  # the interaction's own reply, edited through its token


@pytest.fixture()
def chat(env):  # noqa: F811  (test_discord's bot and fake Discord)
    return env


async def _shown_status(store, job_id: int):
    """The job once its status message's id is stored: posted or edited at last."""
    async def shown():
        job = await store.get(job_id)
        return job if job.status_message not in (None, UNPOSTED) else None

    return await wait_for(shown, timeout=30)


def _said_publicly(fake, text: str) -> bool:
    return any(text in m.content for m in fake.messages.values() if not m.ephemeral and not m.deleted)


async def test_a_refusal_quoting_a_long_value_can_be_sent(chat):
    fake = chat.fake
    post = fake.post_user_message(OWNER, "look", [chat.picture()])
    for prompt in ["a cat --x" + "y" * 2500, "a cat --cfg " + "z" * 2500]:
        opened = await fake.message_command("Animate this image", OWNER, post)
        response = await opened.wait_response()
        submitted = await fake.submit_modal(response["data"]["custom_id"], OWNER, {"prompt": prompt, "seconds": ""})
        answer = await chat.ephemeral_answer(submitted)
        assert ("Unknown option" in answer or "takes a number" in answer) and len(answer) < 400
    admin = await fake.slash_command("admin", ADMIN, {"name": "max_seconds", "value": "x" * 2100},
                                     subcommand="set-limit")
    assert "must be a number" in await chat.ephemeral_answer(admin)
    assert not fake.errors and await chat.store.queue_length() == 0


async def test_a_long_queue_is_listed_within_one_message(chat):
    fake, store = chat.fake, chat.store
    await store.set_limit("max_queued_per_user", "100", "test")
    for _ in range(80):
        job = NewJob("discord", str(fake.channel_id), str(OWNER), "a boat drifts", JobParams(seconds=1.0, steps=2))
        await store.enqueue(job, picture_bytes())
    answer = await chat.ephemeral_answer(await fake.slash_command("queue", OWNER))
    assert len(answer) <= 2000 and "more of yours." in answer and answer.count("Job ") > 10


async def test_a_damaged_picture_after_the_thinking_reply_is_told_to_the_person_alone(chat):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(buffer, format="PNG", exif=b"garbage!")  # a damaged EXIF block
    interaction = await chat.animate(attachment=chat.picture(buffer.getvalue(), "exif.png"))
    assert "damaged or truncated" in await chat.ephemeral_answer(interaction)
    assert interaction.original() is None or interaction.original().deleted
    assert await chat.store.queue_length() == 0


async def test_an_unexpected_failure_after_the_thinking_reply_is_not_shown_to_the_channel(chat, monkeypatch):
    fake = chat.fake

    async def broken(job, pictures):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(chat.store, "enqueue", broken)
    interaction = await chat.animate()
    assert await chat.ephemeral_answer(interaction) == SOMETHING_WRONG
    assert not _said_publicly(fake, "Something went wrong")
    assert interaction.original() is None or interaction.original().deleted


async def test_a_status_discord_refused_at_first_comes_with_the_progress_through_the_token(chat):
    fake, store = chat.fake, chat.store
    # once, and an error discord.py does not try again (it tries a 5xx five times, seconds apart, then raises)
    fake.fail_next(ORIGINAL, DiscordError(401, 50027, "Invalid Webhook Token"), times=1)
    interaction = await chat.animate(seconds=1.0)
    status = await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content and m, 60)
    assert "framepack:cancel:1" in status.custom_ids() and not status.loading
    job = await _shown_status(store, 1)
    assert job.status_message == str(status.id)
    assert not _said_publicly(fake, "Something went wrong") and await store.queue_length() == 1


async def test_a_status_never_shown_while_its_token_worked_gets_a_message_of_its_own(chat):
    fake, store = chat.fake, chat.store
    fake.fail_next(ORIGINAL, DiscordError(401, 50027, "Invalid Webhook Token"), times=1000)
    await chat.animate(seconds=1.0)
    posted = await fake.wait_for(lambda: next((m for m in fake.messages.values() if "Job 1" in m.content
                                               and not m.ephemeral and m.author_id != OWNER), None), 30)
    assert "framepack:cancel:1" in posted.custom_ids()
    job = await _shown_status(store, 1)
    assert job.status_message == str(posted.id) and job.status_message != UNPOSTED
    assert await store.queue_length() == 1


async def test_a_video_the_server_refuses_as_too_large_is_told_once_not_retried_for_ever(chat, tmp_path):
    fake, store = chat.fake, chat.store
    await chat.animate_queued(1, seconds=1.0)
    job = await store.claim("w")
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(3_000_000))
    fake.guild_upload_limit = 1_000_000  # the server lost its boosts after the job was queued at 9 MB
    assert await store.complete(job.id, "w", str(video), {}, lease=job.lease)

    told = await fake.wait_for(lambda: next((m for m in fake.messages.values()
                                             if "was refused as too large" in m.content), None), 30)
    assert not told.attachments and told.content.startswith(f"<@{OWNER}>")

    async def delivered():
        return (await store.get(job.id)).delivered

    await wait_for(delivered, timeout=30)
