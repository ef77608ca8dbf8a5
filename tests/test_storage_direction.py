"""Directed jobs in the store: an end picture and keyframes kept with the job, the new request fields,
each bad input refused with nothing stored, the admins' switches, the CFG cost in the ETA, migration 4."""

from __future__ import annotations

import io
import json
import sqlite3
import time

import pytest
from PIL import Image

from storage.inputs import InputError
from storage.jobs import GuidePictures, JobParams, JobPictures, NewJob
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.sqlite_store import SqliteJobStore


def _png(color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


START, END, KEY1, KEY2 = _png(), _png((0, 0, 200)), _png((0, 200, 0)), _png((9, 9, 9))


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_queued_per_user=5, lease_seconds=30.0,
                    default_seconds_per_step=2.0, default_section_overhead=5.0)


@pytest.fixture()
async def store(tmp_path):
    s = await SqliteJobStore.open(_settings(tmp_path))
    yield s
    await s.close()


def _job(prompt: str = "a cat", guides: GuidePictures | None = None, **params) -> NewJob:
    return NewJob("telegram", "chat", "u1", prompt, JobParams(**{"seconds": 6.0, **params}),
                  guides=guides or GuidePictures())


async def test_a_directed_job_keeps_its_pictures_and_settings_across_a_restart(tmp_path):
    settings = _settings(tmp_path)
    store = await SqliteJobStore.open(settings)
    guides = GuidePictures(end=True, keyframes=(4.0, 2.0))
    params = dict(cfg=3.0, cfg_rescale=0.5, negative_prompt="blurry", end_strength=0.7)
    job_id = (await store.enqueue(_job("[0s: sits] [3s: jumps]", guides, **params),
                                  JobPictures(START, END, (KEY1, KEY2)))).job_id
    await store.close()
    store = await SqliteJobStore.open(settings)  # a restart loses nothing
    try:
        job = await store.get(job_id)
        assert job.guides == guides and job.prompt == "[0s: sits] [3s: jumps]"
        assert (job.params.cfg, job.params.cfg_rescale, job.params.negative_prompt, job.params.end_strength) == (
            3.0, 0.5, "blurry", 0.7)
        files = store.files
        assert files.end_path(job_id).read_bytes() == END
        assert [files.keyframe_path(job_id, i).read_bytes() for i in range(2)] == [KEY1, KEY2]
        assert files.read_pictures(job_id, job.guides) == JobPictures(START, END, (KEY1, KEY2))
        claimed = await store.claim("w1")
        assert claimed.guides == guides and claimed.params.loop is False
    finally:
        await store.close()


async def test_a_loop_is_stored_as_a_plain_flag(store):
    job = await store.get((await store.enqueue(_job(loop=True), START)).job_id)
    assert job.params.loop and job.guides == GuidePictures()


BAD = [
    ("[0s: a cat] [7s: it jumps]", {}, GuidePictures(), "starts after the video ends"),
    ("[3s: a cat] [1s: it jumps]", {}, GuidePictures(), "in time order"),
    ("[0s-4s: a cat] [3s: it jumps]", {}, GuidePictures(), "overlap"),
    ("[0s: a cat] [0.3s: it jumps]", {}, GuidePictures(), "too close to the one before"),
    ("a cat [2s: it jumps]", {}, GuidePictures(), "inside [time: text] brackets"),
    ("a cat", {"cfg": 40.0}, GuidePictures(), "CFG must be between 1 (off) and 32"),
    ("a cat", {"cfg": 0.5}, GuidePictures(), "CFG must be between 1 (off) and 32"),
    ("a cat", {"cfg": 3.0, "cfg_rescale": 2.0}, GuidePictures(), "rescale must be between 0 and 1"),
    ("a cat", {"negative_prompt": "blurry"}, GuidePictures(), "only with real CFG"),
    ("a cat", {"end_strength": 0.0}, GuidePictures(end=True), "strength must be above 0"),
    ("a cat", {"variant": "f1"}, GuidePictures(end=True), "An end frame needs the original variant"),
    ("a cat", {"variant": "f1"}, GuidePictures(keyframes=(2.0,)), "Keyframes needs the original variant"),
    ("a cat", {"variant": "f1", "loop": True}, GuidePictures(), "A loop needs the original variant"),
    ("a cat", {"loop": True}, GuidePictures(end=True), "leave out the end picture, or the loop"),
    ("a cat", {}, GuidePictures(keyframes=(6.5,)), "outside the video"),
    ("a cat", {}, GuidePictures(keyframes=(2.0, 2.2)), "fall in the same section"),
    ("a cat", {}, GuidePictures(keyframes=(1.0, 2.0, 3.0, 4.0, 5.0)), "the limit is 4"),
]


@pytest.mark.parametrize(("prompt", "params", "guides", "message"), BAD)
async def test_bad_direction_is_refused_and_stores_nothing(store, prompt, params, guides, message):
    pictures = JobPictures(START, END if guides.end else None, tuple(KEY1 for _ in guides.keyframes))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        await store.check_request(_job(prompt, guides, **params))
    with pytest.raises(InputError):
        await store.enqueue(_job(prompt, guides, **params), pictures)
    assert await store.queue_length() == 0 and not store.files.root.exists()


@pytest.mark.parametrize(("which", "data", "message"), [
    ("end", b"%PDF-1.4 not a picture", "The end picture: That file is not an image"),
    ("keyframe", b"GIF89a truncated", "The keyframe at 3s: "),
    ("keyframe", b"", "The keyframe at 3s: The image file is empty"),
])
async def test_an_end_picture_or_keyframe_that_is_not_a_picture_stores_nothing(store, which, data, message):
    guides = GuidePictures(end=which == "end", keyframes=(3.0,) if which == "keyframe" else ())
    pictures = JobPictures(START, data if which == "end" else None, (data,) if which == "keyframe" else ())
    with pytest.raises(InputError, match=message):
        await store.enqueue(_job(guides=guides), pictures)
    assert await store.queue_length() == 0 and not store.files.root.exists()


async def test_admins_switch_each_feature_off_and_limit_keyframes(store):
    cases = {
        "end_frame": (_job(guides=GuidePictures(end=True)), "End pictures are switched off"),
        "timed_prompts": (_job("[0s: a cat] [3s: it jumps]"), "Timed prompts"),
        "cfg": (_job(cfg=2.0, negative_prompt="blurry"), "CFG and negative prompts are switched off"),
        "loop": (_job(loop=True), "Loops are switched off"),
    }
    for name, (job, message) in cases.items():
        await store.check_request(job)  # on by default
        limits = await store.set_limit(name, "off", "admin")
        assert limits.describe()[name] == "off"
        with pytest.raises(InputError, match=message):
            await store.check_request(job)
        await store.set_limit(name, "on", "admin")
        await store.check_request(job)
    two = _job(guides=GuidePictures(keyframes=(2.0, 4.0)))
    await store.set_limit("max_keyframes", "1", "admin")
    with pytest.raises(InputError, match="2 keyframes; the limit is 1"):
        await store.check_request(two)
    await store.set_limit("max_keyframes", "0", "admin")
    with pytest.raises(InputError, match="Keyframes are switched off"):
        await store.check_request(_job(guides=GuidePictures(keyframes=(2.0,))))
    with pytest.raises(InputError, match="on or off"):
        await store.set_limit("loop", "maybe", "admin")
    with pytest.raises(InputError, match="between 0 and 4"):
        await store.set_limit("max_keyframes", "9", "admin")


async def test_the_eta_doubles_the_step_time_of_a_cfg_job(store):
    cfg = (await store.enqueue(_job("a cat", seconds=5, steps=25, cfg=3.0), START)).job_id
    plain = (await store.enqueue(_job("a cat", seconds=5, steps=25), START)).job_id
    cfg_seconds = 4 * (25 * 2.0 * 2 + 5.0)
    assert (await store.position(cfg)) == (1, pytest.approx(cfg_seconds))
    assert (await store.position(plain)) == (2, pytest.approx(cfg_seconds + 4 * (25 * 2.0 + 5.0)))


async def test_a_database_from_schema_version_3_is_migrated_and_its_jobs_stay_plain(tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    old = sqlite3.connect(settings.data_dir / "framepack.db")
    for script in MIGRATIONS[:3]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 3")
    old.execute("INSERT INTO jobs (platform, chat_id, user_id, prompt, params, state, created_at) "
                "VALUES ('discord', 'c', 'u', 'a cat', ?, 'queued', ?)",
                (json.dumps({"seconds": 5.0, "variant": "original", "seed": 1, "steps": 25, "teacache": 0.0,
                             "resolution": 640, "upload_limits": [10]}), time.time()))
    old.commit()
    old.close()
    store = await SqliteJobStore.open(settings)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(MIGRATIONS)
        job = await store.get(1)
        assert job.guides == GuidePictures() and job.params.cfg == 1.0 and job.params.negative_prompt == ""
        assert not job.params.loop and job.params.end_strength == 1.0
        assert (await store.position(1))[0] == 1
    finally:
        await store.close()
