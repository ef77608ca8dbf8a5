"""Telegram messages that are not a plain new photo with a caption: edits, other bots' messages in a group, a
channel's posts, stickers and other things the bot does not take, failures around the queueing. Each gets a clear
answer or, where the message was not for the bot, none; none makes a second job or loses one. The real
python-telegram-bot against the fake Bot API; no worker, so the jobs stay queued."""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import picture_bytes, wait_for
from test_telegram import telegram  # noqa: F401  (the fake Bot API)

from bot import texts
from bot.telegram_addressing import command_text, mentions
from bot.telegram_frontend import UNPOSTED

OWNER, OTHER = 501, 502
GROUP = -100
GENERIC = "Something went wrong on my side"


@pytest.fixture()
def chat(telegram):  # noqa: F811  (test_telegram's bot and fake Bot API, with no worker started)
    return telegram


def _replies(fake, chat_id: int) -> list[str]:
    return [p.get("text", "") for p in fake.calls_to("sendMessage") if int(p["chat_id"]) == chat_id]


async def _replied(fake, count: int, chat_id: int = OWNER) -> list[str]:
    async def enough():
        return len(_replies(fake, chat_id)) >= count

    await wait_for(enough, timeout=30)
    return _replies(fake, chat_id)


async def _settled(fake, chat_id: int = OWNER) -> None:
    """Every update sent so far handled: a /help sent last is answered, and updates are handled concurrently,
    so a moment more for the others."""
    fake.send_text(chat_id, OWNER, "/help")
    await fake.wait_for("sendMessage", lambda p: "--seconds" in p.get("text", "") and int(p["chat_id"]) == chat_id,
                        timeout=30)
    await asyncio.sleep(0.5)


# ----- edits -------------------------------------------------------------------------------------------


async def test_an_edited_caption_makes_no_second_job_and_says_edits_are_not_read(chat):
    fake, store = chat.fake, chat.store
    photo = fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.edit(photo, caption="a cat dances --seconds 1")
    await fake.wait_for("sendMessage", lambda p: p.get("text") == texts.EDIT_NOT_READ)
    await _settled(fake)
    assert await store.queue_length() == 1 and (await store.get(1)).prompt == "a cat"


async def test_an_edited_animate_command_or_album_part_makes_no_job(chat):
    fake, store = chat.fake, chat.store
    photo = fake.send_photo(OWNER, OWNER, picture_bytes())
    await fake.wait_for("sendMessage", lambda p: "Add a caption" in p.get("text", ""))
    command = fake.send_text(OWNER, OWNER, "/animate the sea --seconds 1", reply_to=photo)
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.edit(command, text="/animate the sea glitters --seconds 1")
    first = fake.send_photo(OWNER, OWNER, picture_bytes(), caption="she turns --seconds 2", media_group_id="g1")
    fake.send_photo(OWNER, OWNER, picture_bytes(), media_group_id="g1")
    await fake.wait_for("sendMessage", lambda p: "Job 2" in p.get("text", ""))
    fake.edit(first, caption="she turns around --seconds 2")
    await fake.wait_for("sendMessage", lambda p: p.get("text") == texts.EDIT_NOT_READ
                        and _replies(fake, OWNER).count(texts.EDIT_NOT_READ) == 2, timeout=30)
    await _settled(fake)
    assert await store.queue_length() == 2 and (await store.get(2)).guides.end


async def test_an_edit_in_a_group_is_answered_only_where_it_was_for_the_bot(chat):
    fake = chat.fake
    chatter = fake.send_text(GROUP, OTHER, "nice weather")
    fake.edit(chatter, text="nice weather today")
    photo = fake.send_photo(GROUP, OWNER, picture_bytes(), caption="/animate a cat --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.edit(photo, caption="/animate a dog --seconds 1")
    await fake.wait_for("sendMessage", lambda p: p.get("text") == texts.EDIT_NOT_READ)
    await _settled(fake, GROUP)
    assert _replies(fake, GROUP).count(texts.EDIT_NOT_READ) == 1


# ----- whose message it is -------------------------------------------------------------------------------


async def test_in_a_group_captions_for_other_bots_are_left_alone(chat):
    fake, store = chat.fake, chat.store
    for caption in ["/animate@other_bot a cat", "@framepack_test_bot_beta a dog", "/animated_gif_bot make a gif",
                    "hi @other_bot", "email me at someone@framepack_test_bot.org"]:
        fake.send_photo(GROUP, OWNER, picture_bytes(), caption=caption)
    video_file = fake.add_file(b"\0" * 1000)
    fake.send(GROUP, OWNER, caption="/extend@other_bot 5 more",
              video={"file_id": video_file, "file_unique_id": "v", "width": 64, "height": 64, "duration": 1,
                     "file_size": 1000})
    fake.send_document(GROUP, OWNER, b"%PDF-1.4", "application/pdf", "/extend@other_bot please")
    await _settled(fake, GROUP)
    assert await store.queue_length() == 0 and not fake.calls_to("getFile")
    assert [t for t in _replies(fake, GROUP) if "--seconds" not in t] == []  # only /help was answered


async def test_in_a_group_our_command_and_mention_are_read_in_any_case(chat):
    fake, store = chat.fake, chat.store
    fake.send_photo(GROUP, OWNER, picture_bytes(), caption="/animate@FramePack_Test_Bot a cat --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.send_photo(GROUP, OWNER, picture_bytes(), caption="@FRAMEPACK_TEST_BOT a dog, @framepack_test_bot!")
    await fake.wait_for("sendMessage", lambda p: "Job 2" in p.get("text", ""))
    assert [(await store.get(i)).prompt for i in (1, 2)] == ["a cat", "a dog, !"]


async def test_a_channels_post_is_not_read(chat, caplog):
    fake, store = chat.fake, chat.store
    fake.post_in_channel(-1001, caption="/animate a cat", photo=[
        {"file_id": fake.add_file(picture_bytes()), "file_unique_id": "p", "width": 64, "height": 64}])
    await _settled(fake)
    assert await store.queue_length() == 0 and _replies(fake, -1001) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ----- what the bot does not take --------------------------------------------------------------------------


async def test_a_private_message_the_bot_cannot_use_is_told_what_it_can(chat):
    fake = chat.fake
    fake.send(OWNER, OWNER, sticker={"file_id": "s1", "file_unique_id": "s1", "type": "regular", "width": 512,
                                     "height": 512, "is_animated": False, "is_video": False})
    await _replied(fake, 1)
    fake.send(OWNER, OWNER, text="hello")
    await _replied(fake, 2)
    fake.send_text(OWNER, OWNER, "/frobnicate now")
    sticker, hello, unknown = await _replied(fake, 3)
    assert "Send a photo with a caption" in sticker and sticker == hello
    assert unknown == "I don't know /frobnicate. /help lists what I do."


async def test_a_group_message_the_bot_cannot_use_gets_no_answer(chat):
    fake = chat.fake
    fake.send(GROUP, OTHER, text="hello all")
    fake.send(GROUP, OTHER, sticker={"file_id": "s1", "file_unique_id": "s1", "type": "regular", "width": 512,
                                     "height": 512, "is_animated": False, "is_video": False})
    await _settled(fake, GROUP)
    assert [t for t in _replies(fake, GROUP) if "--seconds" not in t] == []


async def test_a_refusal_quoting_a_long_option_value_can_be_sent(chat):
    fake = chat.fake
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat --seconds " + "\u200b" * 1000)
    reply = await fake.wait_for("sendMessage", lambda p: "--seconds takes" in p.get("text", ""), timeout=30)
    assert len(reply["text"]) < 400  # 6033 characters before, which Telegram refuses


# ----- failures around the queueing ------------------------------------------------------------------------


async def test_a_status_reply_that_fails_leaves_the_job_queued_and_the_progress_posts_it(chat):
    fake, store = chat.fake, chat.store
    fake.server_errors["sendMessage"] = 1  # a passing 500 on "Job 1 is next in line"
    photo = fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat --seconds 1")
    posted = await _replied(fake, 2)  # the failed reply, then the progress's post
    assert all("Job 1 is next in line" in text for text in posted)
    status = fake.calls_to("sendMessage")[-1]
    assert status["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "cancel:1"
    assert int(status["reply_parameters"]["message_id"]) == photo["message_id"]
    await wait_for(lambda: _status_of(store, 1), timeout=10)
    await _settled(fake)
    assert not [t for t in _replies(fake, OWNER) if GENERIC in t]
    assert await store.queue_length() == 1


async def _status_of(store, job_id: int) -> bool:
    status = (await store.get(job_id)).status_message
    return status is not None and status != UNPOSTED and status.startswith("t:")


async def test_an_album_that_fails_unexpectedly_is_answered(chat):
    fake, store = chat.fake, chat.store
    fake.server_errors["getFile"] = 5
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="she turns --seconds 2", media_group_id="g1")
    fake.send_photo(OWNER, OWNER, picture_bytes(), media_group_id="g1")
    await fake.wait_for("sendMessage", lambda p: GENERIC in p.get("text", ""), timeout=30)
    assert await store.queue_length() == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("/animate a cat", "a cat"), ("/animate@framepack_test_bot a cat", "a cat"), ("/ANIMATE@FramePack_Test_Bot", ""),
    ("  /animate\na cat", "a cat"), ("/animate@other_bot a cat", None), ("/animated_gif_bot a cat", None),
    ("a cat /animate", None), ("/extend 5", None),
])
def test_the_command_of_a_caption(text, expected):
    assert command_text(text, "animate", "framepack_test_bot") == expected


@pytest.mark.parametrize(("text", "ours"), [
    ("@framepack_test_bot a cat", True), ("a cat @FramePack_Test_Bot.", True), ("@framepack_test_bot_beta x", False),
    ("me@framepack_test_bot", False), ("@@framepack_test_bot", False), ("framepack_test_bot", False),
])
def test_a_mention_of_the_bot_is_a_whole_word_in_any_case(text, ours):
    assert mentions(text, "framepack_test_bot") is ours


async def test_a_group_upgraded_to_a_supergroup_gets_its_progress_and_video_there(chat, tmp_path):
    from storage.jobs import Progress

    fake, store = chat.fake, chat.store
    supergroup = -1001234
    fake.send_photo(GROUP, OWNER, picture_bytes(), caption="/animate a cat --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    job = await store.claim("w")
    fake.migrated[GROUP] = supergroup  # the group's admins changed a setting: Telegram moved it
    await store.report_progress(job.id, "w", Progress(1, 2, 1, 2, None), lease=job.lease)
    status = await fake.wait_for("sendMessage", lambda p: int(p["chat_id"]) == supergroup, timeout=30)
    assert "Job 1: section 1/2" in status["text"] and (await store.get(job.id)).chat_id == str(supergroup)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(64))
    assert await store.complete(job.id, "w", str(video), {}, lease=job.lease)
    sent = await fake.wait_for("sendVideo", timeout=30)
    assert int(sent["chat_id"]) == supergroup

    async def delivered():
        return (await store.get(job.id)).delivered

    await wait_for(delivered, timeout=30)


async def test_a_plain_request_fits_limits_the_admins_lowered_under_the_defaults(chat):
    fake, store = chat.fake, chat.store
    await store.set_limit("max_seconds", "3", "admin")
    await store.set_limit("allowed_variants", "f1", "admin")
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat turns its head")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""), timeout=30)
    params = (await store.get(1)).params
    assert (params.seconds, params.variant) == (3.0, "f1")


# ----- progress and delivery ---------------------------------------------------------------------------------


async def _claimed_with_preview(chat, tmp_path, caption="a cat --seconds 2", chat_id=OWNER):
    """A job queued from a photo, claimed by a stand-in worker that reports one section with a preview GIF."""
    from storage.jobs import Progress

    fake, store = chat.fake, chat.store
    photo = fake.send_photo(chat_id, OWNER, picture_bytes(), caption=caption)
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    job = await store.claim("w")
    gif = tmp_path / "section_0001.gif"
    gif.write_bytes(b"GIF89a" + bytes(32))
    return photo, job, gif, Progress


async def test_a_deleted_photo_still_gets_one_status_with_its_preview(chat, tmp_path):
    fake, store = chat.fake, chat.store
    photo, job, gif, Progress = await _claimed_with_preview(chat, tmp_path)
    fake.deleted.add(photo["message_id"])  # the person deleted their photo while it rendered
    for section in (1, 2):
        await store.report_progress(job.id, "w", Progress(section, 2, 2, 2, str(gif)), lease=job.lease)
        await fake.wait_for("sendAnimation" if section == 1 else "editMessageMedia",
                            lambda p, s=section: f"section {s}/2" in str(p.get("caption", p.get("media"))), timeout=30)
    assert len(fake.calls_to("sendAnimation")) == 1 and (await store.get(job.id)).status_message.startswith("a:")
    assert [t for t in _replies(fake, OWNER) if "section" in t] == []  # no new text status for each section


async def test_a_resumed_render_reports_on_its_animation_caption_and_keeps_it(chat, tmp_path):
    fake, store = chat.fake, chat.store
    _, job, gif, Progress = await _claimed_with_preview(chat, tmp_path)
    await store.report_progress(job.id, "w", Progress(1, 3, 2, 2, str(gif)), lease=job.lease)
    await fake.wait_for("sendAnimation", timeout=30)
    await store.release(job.id, "w", lease=job.lease)  # the worker stops; another resumes the job
    job = await store.claim("w2")
    await store.report_progress(job.id, "w2", Progress(2, 3, 1, 2, None), lease=job.lease)
    edit = await fake.wait_for("editMessageCaption", lambda p: "section 2/3" in p.get("caption", ""), timeout=30)
    assert int(edit["message_id"]) in fake.animations
    assert (await store.get(job.id)).status_message == f"a:{edit['message_id']}"


async def test_flood_control_pauses_a_chats_progress_edits_as_long_as_telegram_asks(chat, tmp_path):
    import time

    fake, store = chat.fake, chat.store
    _, job, _, Progress = await _claimed_with_preview(chat, tmp_path)
    fake.fail_next["editMessageText"] = 7  # "retry after 7 s": longer than the 5 s between edits in a private chat
    await store.report_progress(job.id, "w", Progress(1, 3, 1, 20, None), lease=job.lease)
    await fake.wait_for("editMessageText", timeout=30)
    refused_at, second_at = time.monotonic(), None
    for tick in range(50):  # a step a second, as a render reports them, for 10 s
        if tick % 5 == 0:
            await store.report_progress(job.id, "w", Progress(1, 3, 2 + tick // 5, 20, None), lease=job.lease)
        await asyncio.sleep(0.2)
        if second_at is None and len(fake.calls_to("editMessageText")) > 1:
            second_at = time.monotonic()
    assert second_at is not None and second_at - refused_at >= 6.8  # not before Telegram's pause was over


@pytest.mark.parametrize("refused_by", ["setting", "server"])
async def test_a_video_over_the_upload_limit_is_told_once_not_retried_for_ever(chat, tmp_path, refused_by):
    fake, store = chat.fake, chat.store
    _, job, _, _ = await _claimed_with_preview(chat, tmp_path)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(3_000_000))
    if refused_by == "setting":  # the admin lowered TELEGRAM_UPLOAD_LIMIT after the job made its copies
        chat.bot.settings = chat.bot.settings.model_copy(update={"telegram_upload_limit": 2_000_000})
    else:  # the server takes less than the setting says
        fake.upload_limit = 1_000_000
    assert await store.complete(job.id, "w", str(video), {}, lease=job.lease)
    told = await fake.wait_for("sendMessage", lambda p: "could not be sent" in p.get("text", ""), timeout=30)
    assert ("upload limit (2 MB)" if refused_by == "setting" else "(3.0 MB) was refused") in told["text"]

    async def delivered():
        return (await store.get(job.id)).delivered

    await wait_for(delivered, timeout=30)
    assert len(fake.calls_to("sendVideo")) == (0 if refused_by == "setting" else 1)
