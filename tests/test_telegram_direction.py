"""Directing the motion from Telegram: albums (start, keyframes, end), timed prompts, --negative/--cfg, --loop;
album collection, every bad input, the admins' switches, /help, and the settings in the final message."""

from __future__ import annotations

import asyncio

import pytest
from fake_telegram import FakeTelegram
from helpers import picture_bytes, wait_for
from test_telegram import ADMIN, OWNER, telegram  # noqa: F401  (the fake Telegram fixture)

from storage.jobs import GuidePictures


def _album(fake: FakeTelegram, group: str, count: int, caption: str, caption_on: int = 0, chat: int = OWNER):
    """An album as Telegram sends it: one message per photo, one shared media_group_id, one caption."""
    return [fake.send_photo(chat, OWNER, picture_bytes(), caption=caption if i == caption_on else None,
                            media_group_id=group) for i in range(count)]


def _said(text: str):
    return lambda p: text in p.get("text", "")


@pytest.fixture()
def quick_albums(telegram):  # noqa: F811
    telegram.bot.albums.quiet_seconds = 0.3
    return telegram


async def test_an_album_is_start_keyframe_and_end_and_the_video_says_its_settings(quick_albums):
    env = quick_albums
    fake, store = env.fake, env.store
    env.start_worker()
    caption = ('[0s: a cat sits] [1.2s: the cat jumps] --at 1.5s --seconds 2.4 --seed 9 '
               '--negative "blurry" --cfg 2 --end-strength 0.8')
    _album(fake, "g1", 3, caption, caption_on=1)  # the caption may sit on any part
    await fake.wait_for("sendMessage", _said("next in line"))
    job = await store.get(1)
    assert job.guides == GuidePictures(end=True, keyframes=(1.5,))
    assert job.prompt == "[0s: a cat sits] [1.2s: the cat jumps]"
    assert (job.params.cfg, job.params.negative_prompt, job.params.end_strength, job.params.seed) == (
        2.0, "blurry", 0.8, 9)
    video = await fake.wait_for("sendVideo", timeout=180)
    caption = video["caption"]
    for part in ("seed 9", "2.4 s", "end picture (strength 0.8)", "keyframes at 1.5s", "cfg 2", 'negative "blurry"'):
        assert part in caption, caption
    assert await store.queue_length() == 0 and len(await store.user_jobs("telegram", str(OWNER), True)) == 1

    await wait_for(lambda: _delivered(store, 1))
    fake.click(OWNER, OWNER, 77, "reroll:1")  # a re-roll keeps every setting but the seed
    await fake.wait_for("answerCallbackQuery", lambda p: "new seed" in p.get("text", ""))
    again = await store.get(2)
    assert again.guides == job.guides and again.prompt == job.prompt and again.params.seed != 9
    assert {**again.params.__dict__, "seed": 9} == job.params.__dict__
    assert store.files.read_pictures(2, again.guides) == store.files.read_pictures(1, job.guides)


async def _delivered(store, job_id):
    return (await store.get(job_id)).delivered


async def test_album_parts_are_collected_into_one_job_and_two_albums_stay_apart(quick_albums):
    fake, store = quick_albums.fake, quick_albums.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="she turns around", media_group_id="a")
    await asyncio.sleep(0.1)  # parts trickle in within the quiet time
    fake.send_photo(OWNER, OWNER, picture_bytes(), media_group_id="b")
    fake.send_photo(OWNER, OWNER, picture_bytes(), media_group_id="a")
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a dog --at 2s", media_group_id="b")
    await fake.wait_for("sendMessage", _said("Job 2"))
    jobs = {job.prompt: job for job in await store.user_jobs("telegram", str(OWNER))}
    assert jobs["she turns around"].guides == GuidePictures(end=True)  # two photos: start and end
    assert jobs["a dog"].guides == GuidePictures(keyframes=(2.0,))  # one --at per photo: all keyframes
    assert len(jobs) == 2


async def test_a_loop_and_plain_photo_options(quick_albums):
    fake, store = quick_albums.fake, quick_albums.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat breathes --loop --cfg 1.5 --cfg-rescale 0.2")
    await fake.wait_for("sendMessage", _said("Job 1"))
    job = await store.get(1)
    assert job.params.loop and (job.params.cfg, job.params.cfg_rescale) == (1.5, 0.2)
    assert job.guides == GuidePictures()


BAD_CAPTIONS = [
    (1, "a cat --end", "need an album"),
    (1, "a cat --at 2s", "need an album"),
    (3, "a cat --at 1s --at 2s --at 3s", "2 photo(s) after the start picture and 3 --at"),
    (3, "a cat --end", "2 photo(s) after the start picture and 0 --at"),
    (6, "a cat", "2 to 5 photos"),
    (1, "[0s: a cat] [9s: it jumps] --seconds 5", "starts after the video ends"),
    (1, "[3s: a cat] [1s: it jumps]", "in time order"),
    (1, "[0s-4s: a cat] [3s: it jumps]", "overlap"),
    (1, "a cat --cfg 50", "CFG must be between 1 (off) and 32"),
    (1, "a cat --cfg lots", "--cfg takes a number"),
    (1, "a cat --negative blurry", "only with real CFG"),
    (2, "a cat --f1", "An end frame needs the original variant"),
    (2, "a cat --loop", "leave out the end picture, or the loop"),
    (3, "a cat --at 9s --seconds 5", "outside the video"),
    (2, "a cat --at soon", "--at takes seconds"),
]


@pytest.mark.parametrize(("photos", "caption", "message"), BAD_CAPTIONS)
async def test_bad_direction_gets_a_clear_reply_and_creates_nothing(quick_albums, photos, caption, message):
    fake, store = quick_albums.fake, quick_albums.store
    if photos == 1:
        fake.send_photo(OWNER, OWNER, picture_bytes(), caption=caption)
    else:
        _album(fake, "bad", photos, caption)
    await fake.wait_for("sendMessage", _said(message), timeout=20)
    assert await store.queue_length() == 0 and not store.files.root.exists()
    assert not fake.calls_to("getFile")  # refused before anything was downloaded


async def test_an_album_item_that_is_not_a_picture_creates_nothing(quick_albums):
    fake, store = quick_albums.fake, quick_albums.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat --at 2s --end", media_group_id="m")
    fake.send_document(OWNER, OWNER, b"%PDF-1.4", "application/pdf", None, media_group_id="m")
    fake.send_photo(OWNER, OWNER, picture_bytes(), media_group_id="m")
    await fake.wait_for("sendMessage", _said("Item 2 of the album is not a picture"), timeout=20)
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat", media_group_id="n")
    fake.send_document(OWNER, OWNER, b"not really a png", "image/png", None, media_group_id="n")
    await fake.wait_for("sendMessage", _said("The end picture: That file is not an image"), timeout=20)
    assert await store.queue_length() == 0


async def test_admins_switch_features_off_from_the_chat_and_help_explains_each(quick_albums):
    fake, store = quick_albums.fake, quick_albums.store
    fake.send_text(OWNER, OWNER, "/help")
    help_text = (await fake.wait_for("sendMessage", _said("Directing the motion")))["text"]
    for example in ("album of 2 photos", "--at 3s --end", "[0s: a cat sits] [3s: the cat jumps]",
                    '--negative "blurry" --cfg 3', "a cat --loop"):
        assert example in help_text
    fake.send_text(OWNER, OWNER, "/setlimit loop off")
    await fake.wait_for("sendMessage", _said("Only the bot's admins"))
    for name, value, caption, photos, refusal in [
        ("end_frame", "off", "a cat", 2, "End pictures are switched off"),
        ("max_keyframes", "0", "a cat --at 2s", 2, "Keyframes are switched off"),
        ("max_keyframes", "1", "a cat --at 1s --at 3s", 3, "2 keyframes; the limit is 1"),
        ("timed_prompts", "off", "[0s: a cat] [3s: it jumps]", 1, "Timed prompts ([0s: ...] [3s: ...]) are switched"),
        ("cfg", "off", "a cat --cfg 3", 1, "CFG and negative prompts are switched off"),
        ("loop", "off", "a cat --loop", 1, "Loops are switched off"),
    ]:
        fake.send_text(ADMIN, ADMIN, f"/setlimit {name} {value}")
        await fake.wait_for("sendMessage", _said(f"{name}: {value}"))
        if photos == 1:
            fake.send_photo(OWNER, OWNER, picture_bytes(), caption=caption)
        else:
            _album(fake, f"off-{name}-{value}", photos, caption)
        await fake.wait_for("sendMessage", _said(refusal), timeout=20)
    fake.send_text(OWNER, OWNER, "/help")
    await fake.wait_for("sendMessage", _said("Seamless loop: switched off here."))
    assert await store.queue_length() == 0
