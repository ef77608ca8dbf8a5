"""Telegram: extending videos through the fake Bot API, with a tiny-model worker behind the queue. The Extend
button and its question, /extend in reply to a delivered video or to any video, a video sent with the caption
/extend, and every bad video refused with a clear reply, creating nothing."""

from __future__ import annotations

import time

import pytest
from fake_telegram import BOT_USER
from helpers import picture_bytes, wait_for
from test_extend import write_video
from test_telegram import OWNER, STRANGER, telegram  # noqa: F401  (the fixture)

from engine.video import concat_segments, probe
from storage.extension_rules import KEPT_LATENTS
from storage.jobs import Extends, JobParams, JobState, NewJob


def _send_video(fake, chat_id: int, user_id: int, data: bytes, caption: str | None = None, document: bool = False,
                mime: str = "video/mp4", name: str = "holiday.mp4") -> dict:
    """A person sends a video (or a video file as a document)."""
    file_id = fake.add_file(data)
    item = {"file_id": file_id, "file_unique_id": "v" + file_id, "file_size": len(data), "mime_type": mime,
            "file_name": name}
    media = {"document": item} if document else {"video": {**item, "width": 96, "height": 80, "duration": 2}}
    message = fake.message(chat_id, user_id, **media, **({"caption": caption} if caption else {}))
    fake._push({"message": message})
    return message


def _bot_message(chat_id: int, **fields) -> dict:
    """A message the bot sent, as Telegram repeats it inside a reply to it."""
    return {"message_id": 90_000 + int(time.monotonic_ns() % 10_000), "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"}, "from": BOT_USER, **fields}


def _delivered_video(chat_id: int, job_id: int) -> dict:
    return _bot_message(chat_id, video={"file_id": "vid", "file_unique_id": "vid", "width": 64, "height": 64,
                                        "duration": 1},
                        reply_markup={"inline_keyboard": [[{"text": "Re-roll", "callback_data": f"reroll:{job_id}"},
                                                           {"text": "Extend", "callback_data": f"extend:{job_id}"}]]})


def _replied(fake, chat_id: int, needle: str):
    return fake.wait_for("sendMessage", lambda p: needle in p.get("text", "") and int(p["chat_id"]) == chat_id,
                         timeout=20)


async def _finished(store, user: int = OWNER, chat: int = OWNER) -> int:
    """A delivered render with its kept latents, as a worker and the bot leave it."""
    job = NewJob("telegram", str(chat), str(user), "a cat", JobParams(seconds=1.2, steps=2, variant="f1"))
    job_id = (await store.enqueue(job, picture_bytes())).job_id
    assert (await store.claim("w1")).id == job_id
    store.files.work_dir(job_id).mkdir(parents=True)
    (store.files.work_dir(job_id) / KEPT_LATENTS).write_bytes(b"kept")
    assert await store.complete(job_id, "w1", str(store.files.video_path(job_id)), {})
    await store.mark_delivered(job_id)
    return job_id


async def _done(store, job_id: int):
    job = await store.get(job_id)
    return job if job.state is JobState.DONE else None


async def test_the_extend_button_asks_and_a_reply_extends_then_extend_replied_to_the_video(telegram):  # noqa: F811
    fake, store = telegram.fake, telegram.store
    telegram.start_worker()
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat waves --f1 --seconds 1.2 --seed 77")
    first = await fake.wait_for("sendVideo", timeout=120)
    buttons = [b["callback_data"] for b in first["reply_markup"]["inline_keyboard"][0]]
    assert buttons == ["reroll:1", "extend:1"]

    fake.click(OWNER, STRANGER, 1, "extend:1")  # anyone in the chat, as with re-roll
    asked = await _replied(fake, OWNER, "Extending job 1:")
    assert asked["reply_markup"]["force_reply"] is True
    fake.send_text(OWNER, STRANGER, "1.2", reply_to=_bot_message(OWNER, text=asked["text"]))
    await _replied(fake, OWNER, "Job 2 is")
    job = await store.get(2)
    assert job.extends == Extends(1, None) and job.user_id == str(STRANGER)
    assert (job.prompt, job.params.seed, job.params.seconds) == ("a cat waves", 77, 1.2)
    second = await fake.wait_for("sendVideo", lambda p: "added to job 1" in p.get("caption", ""), timeout=120)
    assert [b["callback_data"] for b in second["reply_markup"]["inline_keyboard"][0]] == ["reroll:2", "extend:2"]
    assert len(second["_files"]["video"]) <= telegram.settings.telegram_upload_limit

    # /extend in reply to the delivered extension: an extension of the extension.
    fake.send_text(OWNER, OWNER, "/extend 1.2 the cat sleeps", reply_to=_delivered_video(OWNER, 2))
    await _replied(fake, OWNER, "Job 3 is")
    third = await wait_for(lambda: _done(telegram.store, 3), timeout=120)
    assert third.extends == Extends(2, None) and third.prompt == "the cat sleeps"
    assert probe(third.video).frames == 37 + 2 * 36


async def test_a_video_with_an_extend_caption_or_an_extend_reply_is_extended(telegram, tmp_path):  # noqa: F811
    fake, store = telegram.fake, telegram.store
    clip = tmp_path / "holiday.mp4"
    write_video(clip, frames=40)
    _send_video(fake, OWNER, OWNER, clip.read_bytes(), caption="/extend 1.2 the waves roll in")
    await _replied(fake, OWNER, "Job 1 is")
    job = await store.get(1)
    assert job.extends == Extends(None, "holiday.mp4") and job.prompt == "the waves roll in"
    assert store.files.source_video_path(1).read_bytes() == clip.read_bytes()

    _send_video(fake, OWNER, OWNER, clip.read_bytes(), caption="/extend 2 a boat sails", document=True,
                mime="video/webm", name="boat.webm")
    await _replied(fake, OWNER, "Job 2 is")
    assert (await store.get(2)).extends == Extends(None, "boat.webm")

    sent = _send_video(fake, STRANGER, STRANGER, clip.read_bytes())
    await _replied(fake, STRANGER, "Reply /extend")  # a video alone in a private chat: how to extend it
    fake.send_text(STRANGER, STRANGER, "/extend 1.2 birds fly over", reply_to=sent)
    await _replied(fake, STRANGER, "Job 3 is")
    assert (await store.get(3)).extends == Extends(None, "holiday.mp4")

    await store.cancel(2, "telegram", str(OWNER))
    await store.cancel(3, "telegram", str(STRANGER))
    telegram.start_worker()
    video = await fake.wait_for("sendVideo", lambda p: "added to holiday.mp4" in p.get("caption", ""), timeout=120)
    assert int(video["chat_id"]) == OWNER
    assert probe((await store.get(1)).video).frames == 40 + 36


async def test_every_bad_video_and_request_gets_a_clear_reply_and_creates_nothing(telegram, tmp_path):  # noqa: F811
    fake, store = telegram.fake, telegram.store
    store.settings = store.settings.model_copy(update={"max_extend_video_bytes": 1_000_000})
    telegram.bot.settings = store.settings
    good = tmp_path / "good.mp4"
    write_video(good, frames=50)
    data = good.read_bytes()
    faststart = concat_segments([good], tmp_path / "faststart.mp4").read_bytes()
    short, mpeg4 = tmp_path / "short.mp4", tmp_path / "old.mp4"
    write_video(short, frames=10)
    write_video(mpeg4, frames=40, codec="mpeg4")
    mine, elsewhere = await _finished(store), await _finished(store, STRANGER, STRANGER)
    removed = await _finished(store)
    await store.mark_files_removed([removed])
    queued = await store.queue_length()

    videos = {
        "its bytes are no video": (b"just words, nothing more", "not a video I can read"),
        "a picture": (picture_bytes(), "not a video I can read"),
        "truncated": (data[: len(data) // 2], "damaged or cut short"),
        "cut short behind its index": (faststart[: len(faststart) * 2 // 3], "frames where its header promises"),
        "too short": (short.read_bytes(), "at least 33 frames"),
        "unsupported codec": (mpeg4.read_bytes(), "encoded as mpeg4"),
    }
    for name, (video, message) in videos.items():
        _send_video(fake, OWNER, OWNER, video, caption="/extend 2 the waves roll in", name=f"{name}.mp4")
        await _replied(fake, OWNER, message)
    downloads = len(fake.calls_to("getFile"))
    _send_video(fake, OWNER, OWNER, data + bytes(1_000_000), caption="/extend 2 waves")
    await _replied(fake, OWNER, "I can extend videos of up to 1 MB")
    assert len(fake.calls_to("getFile")) == downloads  # refused from its declared size, before downloading
    store.settings = store.settings.model_copy(update={"max_extend_video_seconds": 1.0})
    _send_video(fake, OWNER, OWNER, data, caption="/extend 2 waves")
    await _replied(fake, OWNER, "the limit is 1 seconds")
    _send_video(fake, OWNER, OWNER, data, caption="/extend 2")
    await _replied(fake, OWNER, "Write what happens next")
    fake.send_document(OWNER, OWNER, b"%PDF-1.4", "application/pdf", "/extend 2 waves")
    await _replied(fake, OWNER, "not a video")
    fake.send_text(OWNER, OWNER, "/extend 2 waves")
    await _replied(fake, OWNER, "Reply /extend")

    fake.click(OWNER, OWNER, 1, f"extend:{elsewhere}")
    await fake.wait_for("answerCallbackQuery", lambda p: "another chat" in p.get("text", ""), timeout=20)
    fake.click(OWNER, OWNER, 1, f"extend:{removed}")
    await fake.wait_for("answerCallbackQuery", lambda p: "deleted after" in p.get("text", ""), timeout=20)
    fake.send_text(OWNER, OWNER, "500 the cat", reply_to=_bot_message(OWNER, text=f"Extending job {mine}: reply"))
    await _replied(fake, OWNER, "between 1 and 120")
    fake.send_text(OWNER, OWNER, "/extend 2 --loop", reply_to=_delivered_video(OWNER, mine))
    await _replied(fake, OWNER, "are for new videos")
    assert await store.queue_length() == queued
    assert not any(p.get("text", "").startswith("Job ") for p in fake.calls_to("sendMessage"))


@pytest.mark.parametrize("text", ["5 the cat jumps", "the cat jumps --seconds 5", "5s the cat jumps"])
def test_an_extension_reply_reads_its_seconds_first_or_as_an_option(text):
    from bot.extending import parse_extension

    request = parse_extension(text)
    assert (request.seconds, request.prompt) == (5.0, "the cat jumps")


async def test_a_video_the_bot_made_sent_back_continues_from_its_job(telegram):  # noqa: F811
    """Forwarded, or its Extend button lost: the video's metadata names its job, so the owner's /extend continues
    from the kept latents (exactly); someone in another chat may not extend that job, so their copy is extended
    from its frames, with the job's prompt as the default."""
    fake, store = telegram.fake, telegram.store
    telegram.start_worker()
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat waves --f1 --seconds 1.2 --seed 77")
    delivered = (await fake.wait_for("sendVideo", timeout=120))["_files"]["video"]
    await wait_for(lambda: _done(store, 1), timeout=60)

    _send_video(fake, OWNER, OWNER, delivered, caption="/extend 1.2", name="cat.mp4")
    await _replied(fake, OWNER, "Job 2 is")
    job = await store.get(2)
    assert job.extends == Extends(1, None) and (job.prompt, job.params.seed) == ("a cat waves", 77)
    assert not store.files.source_video_path(2).exists()  # nothing re-encoded: the kept latents are the source

    _send_video(fake, STRANGER, STRANGER, delivered, caption="/extend 1.2", name="cat.mp4")
    await _replied(fake, STRANGER, "Job 3 is")
    job = await store.get(3)
    assert job.extends == Extends(None, "cat.mp4") and job.prompt == "a cat waves"
    assert store.files.source_video_path(3).read_bytes() == delivered
    for job_id, user in ((2, OWNER), (3, STRANGER)):
        await store.cancel(job_id, "telegram", str(user))
