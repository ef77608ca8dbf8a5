"""The Telegram frontend against a fake Bot API server, with a tiny-model worker behind the queue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from fake_telegram import BOT_USER, FakeTelegram
from helpers import (
    picture_bytes,
    remove_input,
    stored_job_and_video,
    video_with_settings,
    wait_for,
    worker_env,
    worker_settings,
)
from worker_processes import run_worker
from worker_processes import start_worker as start_worker_for

from bot.options import parse_caption
from bot.telegram_frontend import TelegramBot
from storage.inputs import InputError
from storage.jobs import JobState
from storage.video_metadata import MadeWith

TOKEN = "123456:TEST-token"
OWNER, STRANGER, ADMIN = 501, 502, 900


@pytest.fixture()
async def telegram(stores, tmp_path, tiny_models_dir):
    fake = FakeTelegram(TOKEN)
    url = await fake.start()
    settings = worker_settings(
        tmp_path, tiny_models_dir, telegram_token=TOKEN, telegram_api_url=url, telegram_admin_ids=str(ADMIN),
        render_resolution=64, default_steps=2, lease_seconds=30.0, max_queued_per_user=2,
        telegram_download_limit=20 * 2**20,  # the fake stands in for the cloud Bot API and its limit
    )
    store = await stores(settings)
    bot = TelegramBot(settings, store)
    bot.watcher.poll = 0.2
    stop = asyncio.Event()
    bot_task = asyncio.create_task(bot.run(stop))
    await fake.wait_for("getMe", timeout=30)
    env = type("Env", (), {"fake": fake, "store": store, "settings": settings, "bot": bot, "stop": stop})()
    env.worker = None

    def start_worker():
        env.worker = start_worker_for(store, settings)

    env.start_worker = start_worker
    yield env
    stop.set()
    try:
        if env.worker:
            await env.worker.stop()  # a worker process that crashed fails here, with its log
    finally:
        await asyncio.wait_for(bot_task, 30)
        await fake.stop()


def _text_replies(fake, chat_id):
    return [p.get("text", "") for p in fake.calls_to("sendMessage") if int(p["chat_id"]) == chat_id]


async def test_photo_with_caption_to_video_reply(telegram):
    fake = telegram.fake
    telegram.start_worker()
    photo = fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat turns its head --seconds 3.6 --seed 77")
    queued = await fake.wait_for("sendMessage", lambda p: "next in line" in p.get("text", ""))
    assert queued["reply_markup"]["inline_keyboard"][0][0]["callback_data"].startswith("cancel:")
    preview = await fake.wait_for("sendAnimation", timeout=120)
    assert "/3, step" in preview["caption"] and preview["_files"]["animation"].startswith(b"GIF8")
    video = await fake.wait_for("sendVideo", timeout=120)
    assert int(video["reply_parameters"]["message_id"]) == photo["message_id"]
    assert "seed 77" in video["caption"] and video["supports_streaming"] in ("true", True)
    assert video["reply_markup"]["inline_keyboard"][0][0]["callback_data"].startswith("reroll:")
    assert len(video["_files"]["video"]) <= telegram.settings.telegram_upload_limit
    job = (await telegram.store.user_jobs("telegram", str(OWNER), include_finished=True))[0]
    _reply_info(fake, OWNER, OWNER, video["_files"]["video"])  # the delivered (upload-sized) file says how it was made
    shown = await fake.wait_for("sendMessage", lambda p: "Prompt:" in p.get("text", ""))
    assert "Seed 77, 3.6 s" in shown["text"] and f"reroll:{job.id}" in str(shown["reply_markup"])
    assert job.state is JobState.DONE and job.params.seed == 77 and job.params.seconds == 3.6
    for _ in range(50):
        if (await telegram.store.get(job.id)).delivered:
            break
        await asyncio.sleep(0.1)
    assert (await telegram.store.get(job.id)).delivered


async def test_bad_inputs_get_a_clear_reply_and_create_nothing(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="waves --seconds 500")
    await fake.wait_for("sendMessage", lambda p: "between 1 and 120" in p.get("text", ""))
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="waves --steps lots")
    await fake.wait_for("sendMessage", lambda p: "takes a number" in p.get("text", ""))
    fake.send_photo(OWNER, OWNER, picture_bytes())
    await fake.wait_for("sendMessage", lambda p: "Add a caption" in p.get("text", ""))
    fake.send_document(OWNER, OWNER, b"%PDF-1.4", "application/pdf", "animate this")
    await fake.wait_for("sendMessage", lambda p: "not a picture" in p.get("text", ""))
    fake.send_document(OWNER, OWNER, b"not really a png", "image/png", "animate this")
    await fake.wait_for("sendMessage", lambda p: "not an image" in p.get("text", ""))
    await store.set_limit("max_image_bytes", "10000", "test")
    big = picture_bytes()
    assert len(big) > 10_000
    downloads = len(fake.calls_to("getFile"))
    fake.send_photo(OWNER, OWNER, big, caption="too big a picture")
    await fake.wait_for("sendMessage", lambda p: "the limit is 0.01 MB" in p.get("text", ""))
    assert len(fake.calls_to("getFile")) == downloads  # refused from its declared size, before downloading
    await store.set_limit("max_image_bytes", "30000000", "test")
    assert await store.queue_length() == 0
    for _ in range(2):
        fake.send_photo(OWNER, OWNER, picture_bytes(), caption="ok --seconds 1")
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="one too many --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "the limit is 2" in p.get("text", ""))
    assert await store.queue_length() == 2


async def test_document_image_and_reply_to_photo_with_animate(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_document(OWNER, OWNER, picture_bytes(), "image/png", "a file picture --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    photo = fake.send_photo(STRANGER, STRANGER, picture_bytes())
    await fake.wait_for("sendMessage", lambda p: "Add a caption" in p.get("text", "") and int(p["chat_id"]) == STRANGER)
    fake.send_text(STRANGER, STRANGER, "/animate the sea glitters --f1", reply_to=photo)
    await fake.wait_for("sendMessage", lambda p: "Job 2" in p.get("text", ""))
    job = await store.get(2)
    assert job.prompt == "the sea glitters" and job.params.variant == "f1"
    fake.send_text(OWNER, OWNER, "/animate no photo here")
    await fake.wait_for("sendMessage", lambda p: "Reply to a photo" in p.get("text", ""))


async def test_groups_only_answer_when_addressed(telegram):
    fake, store = telegram.fake, telegram.store
    group = -100
    fake.send_photo(group, OWNER, picture_bytes(), caption="just sharing my holiday")
    fake.send_photo(group, OWNER, picture_bytes(), caption=f"@{BOT_USER['username']} make it snow --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    await asyncio.sleep(0.5)
    assert await store.queue_length() == 1
    assert (await store.get(1)).prompt == "make it snow"


async def test_cancel_button_owner_and_stranger(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="rain --seconds 1")
    queued = await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    data = queued["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    fake.click(OWNER, STRANGER, 1, data)
    refused = await fake.wait_for("answerCallbackQuery", lambda p: "Only the person" in p.get("text", ""))
    assert refused["show_alert"] in ("true", True)
    assert (await store.get(1)).state is JobState.QUEUED
    fake.click(OWNER, OWNER, 1, data)
    await fake.wait_for("answerCallbackQuery", lambda p: p.get("text") == "Cancelled.")
    assert (await store.get(1)).state is JobState.CANCELLED
    await fake.wait_for("sendMessage", lambda p: "was cancelled" in p.get("text", ""))  # delivered as a result


async def test_queue_and_cancel_commands(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="rain --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.send_text(OWNER, OWNER, "/queue")
    await fake.wait_for("sendMessage", lambda p: "1 job(s) waiting in all" in p.get("text", ""))
    fake.send_text(STRANGER, STRANGER, "/cancel 1")
    await fake.wait_for("sendMessage", lambda p: "Only the person" in p.get("text", ""))
    fake.send_text(ADMIN, ADMIN, "/cancel 1")
    await fake.wait_for("sendMessage", lambda p: p.get("text") == "Cancelled." and int(p["chat_id"]) == ADMIN)
    assert (await store.get(1)).state is JobState.CANCELLED


async def test_admin_limits(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_text(STRANGER, STRANGER, "/setlimit max_seconds 10")
    await fake.wait_for("sendMessage", lambda p: "Only the bot's admins" in p.get("text", ""))
    assert (await store.get_limits()).max_seconds == 120
    fake.send_text(ADMIN, ADMIN, "/setlimit max_seconds lots")
    await fake.wait_for("sendMessage", lambda p: "must be a number" in p.get("text", ""))
    fake.send_text(ADMIN, ADMIN, "/setlimit max_seconds 10")
    await fake.wait_for("sendMessage", lambda p: "Limit changed" in p.get("text", ""))
    assert (await store.get_limits()).max_seconds == 10
    fake.send_text(ADMIN, ADMIN, "/limits")
    await fake.wait_for("sendMessage", lambda p: "max_seconds: 10 s" in p.get("text", ""))
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="long --seconds 20")
    await fake.wait_for("sendMessage", lambda p: "between 1 and 10" in p.get("text", ""))


async def test_undelivered_results_are_delivered_after_a_restart_despite_flood_control(telegram):
    fake, store = telegram.fake, telegram.store
    fake.fail_next["sendVideo"] = 1  # Telegram says "retry after 1 s" once
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="snow --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    # The bot goes down; a worker finishes the job meanwhile.
    telegram.stop.set()
    await asyncio.sleep(1.0)
    await run_worker(store, telegram.settings, max_jobs=1)
    assert (await store.get(1)).state is JobState.DONE and not (await store.get(1)).delivered
    restarted = TelegramBot(telegram.settings, store)
    restarted.watcher.poll = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))
    try:
        video = await fake.wait_for("sendVideo", lambda p: "_files" not in p or True, timeout=60)
        assert video["caption"].startswith("Done")
        for _ in range(100):
            if (await store.get(1)).delivered:
                break
            await asyncio.sleep(0.1)
        assert (await store.get(1)).delivered
        assert len(fake.calls_to("sendVideo")) == 2  # the 429, then the real upload
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_caption_options():
    request = parse_caption("a cat dances --seconds 10 --seed 42 --f1 --steps 20")
    assert (request.prompt, request.seconds, request.seed, request.variant, request.steps) == (
        "a cat dances", 10.0, 42, "f1", 20)
    assert parse_caption("just words -- with dashes").prompt == "just words -- with dashes"
    assert parse_caption("rain --fast --seconds 3").fast and not request.fast
    for bad in ("x --seconds", "x --colour red", "x --seed -3", "x --seconds ten"):
        with pytest.raises(InputError):
            parse_caption(bad)


async def test_reroll_queues_the_same_picture_and_prompt_with_a_new_seed(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a fox --seconds 1 --seed 5")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.click(OWNER, STRANGER, 77, "reroll:1")  # anyone who sees the result may re-roll it, for themselves
    await fake.wait_for("sendMessage", lambda p: "Job 2" in p.get("text", ""))
    first, second = await store.get(1), await store.get(2)
    assert second.prompt == first.prompt and second.user_id == str(STRANGER)
    assert second.params.seed != first.params.seed and second.params.seconds == first.params.seconds
    assert store.files.input_path(2).read_bytes() == store.files.input_path(1).read_bytes()


async def test_later_previews_replace_the_animation_in_place(telegram):
    fake = telegram.fake
    telegram.start_worker()
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="clouds drift --seconds 3.6 --steps 6")
    first = await fake.wait_for("sendAnimation", timeout=120)
    assert first["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "cancel:1"
    edited = await fake.wait_for("editMessageMedia", timeout=120)
    media = edited["media"]
    assert media["type"] == "animation" and "/3, step" in media["caption"]
    attached = media["media"].removeprefix("attach://")
    assert edited["_files"][attached].startswith(b"GIF8")
    await fake.wait_for("sendVideo", timeout=120)
    # The status message (the text, then the animation) is removed once the video is posted.
    assert fake.calls_to("deleteMessage")


async def test_progress_messages_resume_after_a_bot_restart(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="waves roll --seconds 3.6 --steps 6")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    status = (await store.get(1)).status_message
    assert status.startswith("t:")
    telegram.stop.set()  # the bot goes down; the fixture's task ends
    await asyncio.sleep(1.0)
    restarted = TelegramBot(telegram.settings, store)
    restarted.watcher.poll = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))
    telegram.start_worker()
    try:
        await fake.wait_for("sendAnimation", timeout=120)
        # The new process took over the old status message: it replaced it with the preview.
        await fake.wait_for("deleteMessage", lambda p: int(p["message_id"]) == int(status[2:]), timeout=30)
        await fake.wait_for("sendVideo", timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_serve_runs_the_telegram_frontend_with_a_worker_process(tmp_path, tiny_models_dir):
    """The product path: `framepack-bot serve` with a token, a worker subprocess, the fake Bot API."""
    fake = FakeTelegram(TOKEN)
    url = await fake.start()
    settings = worker_settings(tmp_path, tiny_models_dir)
    env = {**worker_env(settings), "TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": url, "RENDER_RESOLUTION": "64",
           "DEFAULT_STEPS": "2", "ENGINE_WORKERS": "1"}
    log = tmp_path / "serve.log"
    serve = _start_serve(env, log)
    try:
        await fake.wait_for("getMe", timeout=60)
        photo = fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a lantern sways --seconds 1")
        video = await fake.wait_for("sendVideo", timeout=180)
        assert int(video["reply_parameters"]["message_id"]) == photo["message_id"]
    finally:
        code = await _stop_serve(serve, fake)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "telegram: polling as @framepack_test_bot" in text and "No chat frontend" not in text
    assert os.path.exists(settings.data_dir / "jobs" / "1" / "video.mp4")
    secret = TOKEN.split(":")[1]
    assert secret not in text and TOKEN not in text, [line for line in text.splitlines() if secret in line][:3]


async def test_a_refused_token_is_logged_without_the_token_and_the_frontend_restarts(tmp_path, tiny_models_dir):
    fake = FakeTelegram("999999:the-real-token-is-another")
    url = await fake.start()
    settings = worker_settings(tmp_path, tiny_models_dir)
    env = {**worker_env(settings), "TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": url, "ENGINE_WORKERS": "1"}
    log = tmp_path / "serve.log"
    serve = _start_serve(env, log)
    try:
        await wait_for(lambda: _logged(log, "restarting in 2 s"), timeout=60)  # two deaths, each with its reason
    finally:
        code = await _stop_serve(serve, fake)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "frontend telegram stopped (InvalidToken" in text
    assert TOKEN.split(":")[1] not in text and "Traceback" not in text, text[-3000:]


def _start_serve(env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


async def _stop_serve(serve: subprocess.Popen, fake: FakeTelegram) -> int:
    serve.send_signal(signal.SIGTERM)
    code = serve.wait(timeout=90)
    await fake.stop()
    return code


async def _logged(log, needle: str) -> bool:
    return needle in log.read_text()


async def test_a_user_who_blocked_the_bot_gets_one_try_and_a_record(telegram, caplog):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a kite --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    fake.blocked.add(OWNER)
    telegram.start_worker()
    job = await wait_for(lambda: _delivered(store, 1), timeout=180)
    await asyncio.sleep(2)  # ten more watcher ticks
    assert job.delivery_error == "Forbidden: bot was blocked by the user"
    assert len(fake.calls_to("sendVideo")) == 1
    assert caplog.text.count("cannot be delivered") == 1 and "Traceback" not in caplog.text


async def test_a_server_error_is_retried_and_the_video_arrives(telegram, monkeypatch):
    from storage import sql_store

    monkeypatch.setattr(sql_store, "DELIVERY_RETRY_FIRST", 0.5)
    fake, store = telegram.fake, telegram.store
    fake.server_errors["sendVideo"] = 2
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a kite --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    telegram.start_worker()
    job = await wait_for(lambda: _delivered(store, 1), timeout=180)
    assert job.delivery_error is None and job.delivery_attempts == 2
    assert len(fake.calls_to("sendVideo")) == 3


async def test_a_lost_video_file_is_told_once(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a kite --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    await store.claim("w")
    await store.complete(1, "w", str(telegram.settings.data_dir / "gone.mp4"), {})
    await fake.wait_for("sendMessage", lambda p: "video file was lost" in p.get("text", ""))
    job = await wait_for(lambda: _delivered(store, 1), timeout=30)
    assert job.delivery_error == "the video file is missing" and not fake.calls_to("sendVideo")


async def test_a_file_over_telegrams_download_limit_is_refused_before_get_file(telegram):
    fake, store = telegram.fake, telegram.store
    await store.set_limit("max_image_bytes", "30000000", "test")
    big = picture_bytes() + b"\0" * (21 * 2**20)  # a PNG with trailing bytes: 21 MB declared
    downloads = len(fake.calls_to("getFile"))
    fake.send_document(OWNER, OWNER, big, "image/png", "a huge file --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "download files of up to 20 MB" in p.get("text", ""))
    assert len(fake.calls_to("getFile")) == downloads and await store.queue_length() == 0


@pytest.mark.parametrize("number", ["18446744073709551616", "9223372036854775808", "-3", "0", "1e9", "１"])
async def test_job_numbers_that_cannot_be_jobs_get_a_plain_answer(telegram, number):
    fake = telegram.fake
    fake.send_text(OWNER, OWNER, f"/cancel {number}")
    await fake.wait_for("sendMessage", lambda p: "Usage: /cancel" in p.get("text", ""))
    fake.click(OWNER, OWNER, 1, f"cancel:{number}")
    fake.click(OWNER, OWNER, 1, f"reroll:{number}")

    async def both_buttons_answered():  # the two clicks are answered in either order
        return len([p for p in fake.calls_to("answerCallbackQuery") if "out of date" in p.get("text", "")]) == 2

    await wait_for(both_buttons_answered, timeout=30)


async def test_reroll_checks_before_it_answers_and_files_the_job_in_the_clickers_chat(telegram):
    fake, store = telegram.fake, telegram.store
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a fox --seconds 1")
    await fake.wait_for("sendMessage", lambda p: "Job 1" in p.get("text", ""))
    group = -200
    fake.click(group, STRANGER, 77, "reroll:1")
    await fake.wait_for("answerCallbackQuery", lambda p: p.get("text") == "Queued with a new seed.")
    assert (await store.get(2)).chat_id == str(group)
    remove_input(store, 1)
    fake.click(group, STRANGER, 77, "reroll:1")
    answer = await fake.wait_for("answerCallbackQuery", lambda p: "no longer stored" in p.get("text", ""))
    assert answer["show_alert"] in ("true", True) and await store.queue_length() == 2


async def test_a_full_disk_at_enqueue_gets_a_plain_reply(telegram, monkeypatch):
    import errno

    from storage.files import JobFiles

    def disk_full(self, job_id, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.input_path(job_id)))

    monkeypatch.setattr(JobFiles, "write_input", disk_full)
    telegram.fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a kite --seconds 1")
    reply = await telegram.fake.wait_for("sendMessage", lambda p: "out of disk space" in p.get("text", ""))
    assert str(telegram.settings.data_dir) not in reply["text"] and await telegram.store.queue_length() == 0


async def test_an_unexpected_error_in_a_handler_gets_an_answer(telegram, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(telegram.store, "user_jobs", broken)
    telegram.fake.send_text(OWNER, OWNER, "/queue")
    await telegram.fake.wait_for("sendMessage", lambda p: "Something went wrong on my side" in p.get("text", ""))


async def _delivered(store, job_id: int):
    job = await store.get(job_id)
    return job if job.delivered else None


def _reply_info(fake, chat_id: int, user_id: int, data: bytes, kind: str = "video", mime: str = "video/mp4") -> None:
    """A person replies /info to a message carrying `data` as a video, or as a document of type `mime`."""
    file_id = fake.add_file(data)
    if kind == "video":
        media = {"video": {"file_id": file_id, "file_unique_id": "v" + file_id, "width": 32, "height": 32,
                           "duration": 1, "mime_type": mime, "file_size": len(data)}}
    else:
        media = {"document": {"file_id": file_id, "file_unique_id": "d" + file_id, "file_name": "clip.mp4",
                              "mime_type": mime, "file_size": len(data)}}
    fake.send_text(chat_id, user_id, "/info", reply_to=fake.message(chat_id, STRANGER, **media))


async def test_info_shows_a_videos_settings_and_animate_again_queues_them(telegram, tmp_path):
    fake, store = telegram.fake, telegram.store
    job_id, video = await stored_job_and_video(store, tmp_path, "telegram")
    _reply_info(fake, OWNER, OWNER, video)
    shown = await fake.wait_for("sendMessage", lambda p: "Prompt:" in p.get("text", ""))
    assert 'Prompt: "a fox runs"' in shown["text"] and "Seed 5, 2 s, original, 3 steps" in shown["text"]
    assert f"reroll:{job_id}" in str(shown["reply_markup"]) and "Animate again" in str(shown["reply_markup"])

    fake.click(OWNER, OWNER, 77, f"reroll:{job_id}")
    await fake.wait_for("sendMessage", lambda p: f"Job {job_id + 1}" in p.get("text", ""))
    first, second = await store.get(job_id), await store.get(job_id + 1)
    assert (second.prompt, second.params.negative_prompt, second.user_id) == ("a fox runs", "blur", str(OWNER))
    assert second.params.seed != first.params.seed

    _reply_info(fake, OWNER, OWNER, video, kind="document")  # an MP4 sent as a file reads the same
    await wait_for(lambda: asyncio.sleep(0, sum("Prompt:" in p.get("text", "") for p in fake.calls_to("sendMessage"))
                                         == 2), timeout=30)
    other_bot = video_with_settings(tmp_path, MadeWith(prompt="a fox runs", seed=6, variant="original", steps=3,
                                                       seconds=2.0, job_id=job_id))  # same number, other seed
    _reply_info(fake, OWNER, OWNER, other_bot)
    refused = await fake.wait_for("sendMessage", lambda p: "not in this bot's records" in p.get("text", ""))
    assert "reply_markup" not in refused or "reroll" not in str(refused["reply_markup"])


async def test_info_refuses_a_video_without_settings_and_what_is_not_a_video(telegram, tmp_path):
    fake = telegram.fake
    _reply_info(fake, OWNER, OWNER, video_with_settings(tmp_path))
    await fake.wait_for("sendMessage", lambda p: "does not say how it was made" in p.get("text", ""))
    _reply_info(fake, OWNER, OWNER, b"GIF89a" + bytes(64), kind="document")
    await fake.wait_for("sendMessage", lambda p: "not an MP4 video" in p.get("text", ""))
    fake.send_text(OWNER, OWNER, "/info")
    await fake.wait_for("sendMessage", lambda p: "Reply /info to a video" in p.get("text", ""))
    big = bytes(21 * 2**20)  # over the Bot API's 20 MiB download limit: refused before getFile
    calls = len(fake.calls_to("getFile"))
    _reply_info(fake, OWNER, OWNER, big)
    await fake.wait_for("sendMessage", lambda p: "I can read videos of up to" in p.get("text", ""))
    assert len(fake.calls_to("getFile")) == calls
