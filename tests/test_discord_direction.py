"""Directing the motion from Discord: /animate's end_image, negative, cfg and loop, timed prompts in the prompt,
/animate_keyframes; every bad input refused with nothing created; the admins' switches; /help; the settings
in the final message and a re-roll that keeps them."""

from __future__ import annotations

import pytest
from test_discord import ADMIN, OWNER, STRANGER, _delivered, _video_message, env  # noqa: F401  (the fake Discord)

from storage.jobs import GuidePictures


async def _queued(env, interaction, number: int):  # noqa: F811
    return await env.fake.wait_for(lambda: (m := interaction.original()) and f"Job {number}" in m.content and m)


async def test_end_image_timed_prompt_and_cfg_through_animate_then_a_reroll_keeps_them(env):  # noqa: F811
    fake, store = env.fake, env.store
    env.start_worker()
    interaction = await fake.slash_command(
        "animate", OWNER, {"prompt": "[0s: a cat sits] [1.2s: the cat jumps]", "seconds": 2.4, "seed": 21,
                           "negative": "blurry", "cfg": 2.0, "end_strength": 0.6},
        attachments={"image": env.picture(), "end_image": env.picture(name="end.png")})
    await _queued(env, interaction, 1)
    job = await store.get(1)
    assert job.guides == GuidePictures(end=True) and job.prompt.startswith("[0s: a cat sits]")
    assert (job.params.cfg, job.params.negative_prompt, job.params.end_strength) == (2.0, "blurry", 0.6)
    video = await fake.wait_for(lambda: _video_message(fake, 1), 180)
    await _delivered(store, 1, fake)
    for part in ("seed 21", "end picture (strength 0.6)", "cfg 2", 'negative "blurry"'):
        assert part in video.content, video.content

    reroll = await fake.click("framepack:reroll:1", STRANGER, video)
    await reroll.wait_response()
    await _queued(env, reroll, 2)
    again = await store.get(2)
    assert again.guides == job.guides and again.prompt == job.prompt and again.params.seed != 21
    assert {**again.params.__dict__, "seed": 21} == job.params.__dict__
    assert store.files.read_pictures(2, again.guides) == store.files.read_pictures(1, job.guides)


async def test_animate_keyframes_and_a_loop(env):  # noqa: F811
    fake, store = env.fake, env.store
    interaction = await fake.slash_command(
        "animate_keyframes", OWNER, {"prompt": "she waves", "at1": 3.0, "at2": 1.5, "seconds": 5.0},
        attachments={"image": env.picture(), "keyframe1": env.picture(name="k1.png"),
                     "keyframe2": env.picture(name="k2.png"), "end_image": env.picture(name="end.png")})
    await _queued(env, interaction, 1)
    job = await store.get(1)
    assert job.guides == GuidePictures(end=True, keyframes=(3.0, 1.5))
    assert store.files.keyframe_path(1, 1).is_file() and store.files.end_path(1).is_file()
    loop = await env.animate(prompt="a cat breathes", loop=True)
    await _queued(env, loop, 2)
    assert (await store.get(2)).params.loop


BAD = [
    ({"prompt": "[0s: a cat] [9s: it jumps]", "seconds": 5.0}, {}, "starts after the video ends"),
    ({"prompt": "[3s: a cat] [1s: it jumps]"}, {}, "in time order"),
    ({"prompt": "[0s-4s: a cat] [3s: it jumps]"}, {}, "overlap"),
    ({"cfg": 40.0}, {}, "CFG must be between 1 (off) and 32"),
    ({"negative": "blurry"}, {}, "only with real CFG"),
    ({"variant": "f1"}, {"end_image": "end.png"}, "An end frame needs the original variant"),
    ({"loop": True}, {"end_image": "end.png"}, "leave out the end picture, or the loop"),
    ({}, {"end_image": "notes.pdf"}, "notes.pdf is not a picture"),
]


@pytest.mark.parametrize(("options", "files", "message"), BAD)
async def test_bad_animate_direction_is_refused_and_creates_nothing(env, options, files, message):  # noqa: F811
    attachments = {"image": env.picture()}
    for key, name in files.items():
        kind = "application/pdf" if name.endswith(".pdf") else "image/png"
        attachments[key] = env.picture(b"%PDF-1.4" if kind == "application/pdf" else None, name, kind)
    interaction = await env.fake.slash_command("animate", OWNER, {"prompt": "a cat", **options},
                                               attachments=attachments)
    await interaction.wait_response()
    assert message in await env.ephemeral_answer(interaction)
    assert await env.store.queue_length() == 0 and not env.store.files.root.exists()


@pytest.mark.parametrize(("options", "keyframe", "message"), [
    ({"at1": 7.0, "seconds": 5.0}, None, "outside the video"),
    ({"at1": 2.0, "at2": 2.2}, "png", "fall in the same section"),
    ({"at1": 2.0, "at2": 3.0}, None, "keyframe2 and at2 go together"),
    ({"at1": 2.0}, "damaged", "The keyframe at 2s: That file is not an image"),
])
async def test_bad_keyframes_are_refused_and_create_nothing(env, options, keyframe, message):  # noqa: F811
    attachments = {"image": env.picture(), "keyframe1": env.picture(name="k1.png")}
    if keyframe == "png":
        attachments["keyframe2"] = env.picture(name="k2.png")
    if keyframe == "damaged":
        attachments["keyframe1"] = env.picture(b"not really a png", "k1.png")
    interaction = await env.fake.slash_command("animate_keyframes", OWNER, {"prompt": "a cat", **options},
                                               attachments=attachments)
    await interaction.wait_response()
    assert message in await env.ephemeral_answer(interaction)
    assert await env.store.queue_length() == 0 and not list(env.store.files.root.glob("*/keyframe_*"))


async def test_admins_switch_features_off_and_help_explains_each(env):  # noqa: F811
    fake, store = env.fake, env.store
    help_ = await fake.slash_command("help", STRANGER)
    text = await env.ephemeral_answer(help_)
    for example in ("end_image:<end>", "/animate_keyframes", "[0s: a cat sits] [3s: the cat jumps]",
                    'negative:"blurry" cfg:3', "loop:True"):
        assert example in text
    refused = await fake.slash_command("admin", STRANGER, {"name": "cfg", "value": "off"}, subcommand="set-limit")
    assert "Only the bot's admins" in await env.ephemeral_answer(refused)
    changed = await fake.slash_command("admin", ADMIN, {"name": "cfg", "value": "off"}, subcommand="set-limit")
    assert "cfg: off" in await env.ephemeral_answer(changed)
    refused = await env.animate(cfg=3.0)
    assert "CFG and negative prompts are switched off" in await env.ephemeral_answer(refused)
    changed = await fake.slash_command("admin", ADMIN, {"name": "max_keyframes", "value": "1"},
                                       subcommand="set-limit")
    assert "max_keyframes: 1" in await env.ephemeral_answer(changed)
    two = await fake.slash_command(
        "animate_keyframes", OWNER, {"prompt": "a cat", "at1": 1.0, "at2": 3.0},
        attachments={"image": env.picture(), "keyframe1": env.picture(), "keyframe2": env.picture()})
    await two.wait_response()
    assert "2 keyframes; the limit is 1" in await env.ephemeral_answer(two)
    await store.set_limit("end_frame", "off", "test")
    ended = await fake.slash_command("animate", OWNER, {"prompt": "a cat"},
                                     attachments={"image": env.picture(), "end_image": env.picture()})
    await ended.wait_response()
    assert "End pictures are switched off" in await env.ephemeral_answer(ended)
    text = await env.ephemeral_answer(await fake.slash_command("help", STRANGER))
    assert "End picture: switched off here." in text and "Negative prompt and real CFG: switched off here." in text
    assert await store.queue_length() == 0
