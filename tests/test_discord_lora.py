"""LoRAs from Discord: /animate's lora1..3 (names completed from LORA_DIR) and strength1..3, checked before
anything is queued; the LoRAs in the delivered video's settings and kept by a re-roll; `/admin loras`."""

from __future__ import annotations

import pytest
from fake_discord import AUTOCOMPLETE, CHAT_INPUT
from lora_files import write_lora
from test_discord import ADMIN, OWNER, STRANGER, _delivered, _video_message, env  # noqa: F401  (the fake Discord)

from storage.lora_catalog import file_sha256


@pytest.fixture()
def with_loras(env, original_models):  # noqa: F811
    folder = env.settings.lora_dir
    write_lora(folder / "style.safetensors", original_models.transformer, "musubi-hunyuan", std=0.1)
    write_lora(folder / "ink.safetensors", original_models.transformer, "diffusers", std=0.1, seed=2)
    (folder / "broken.safetensors").write_bytes(b"\x00" * 64)  # listed, and refused by the check
    return env


async def _autocomplete(fake, user: int, option: str, typed: str) -> list[dict]:
    """What Discord's client sends while a person types into an autocomplete option, and the bot's choices."""
    command = fake._find_command("animate", CHAT_INPUT, True)
    data = {"id": command["id"], "name": "animate", "type": CHAT_INPUT, "guild_id": command.get("guild_id"),
            "options": [{"name": "prompt", "type": 3, "value": "a cat"},
                        {"name": option, "type": 3, "value": typed, "focused": True}]}
    interaction = await fake._interact(AUTOCOMPLETE, user, data, guild=True)
    response = await interaction.wait_response()
    assert response["type"] == 8
    return response["data"]["choices"]


async def test_lora_options_complete_from_the_folder(with_loras):
    names = {o["name"] for o in next(c for c in with_loras.fake.commands[with_loras.fake.guild_id]
                                     if c["name"] == "animate")["options"]}
    assert {"lora1", "strength1", "lora2", "strength2", "lora3", "strength3"} <= names
    assert [c["value"] for c in await _autocomplete(with_loras.fake, OWNER, "lora1", "")] == ["broken", "ink", "style"]
    assert [c["value"] for c in await _autocomplete(with_loras.fake, OWNER, "lora3", "St")] == ["style"]


async def test_animate_with_loras_renders_with_them_and_a_reroll_keeps_them(with_loras):
    bot_env = with_loras
    fake, store = bot_env.fake, bot_env.store
    bot_env.start_worker()
    interaction = await bot_env.animate(seconds=1.2, lora1="style", strength1=0.8, lora3="ink")
    await fake.wait_for(lambda: (m := interaction.original()) and "Job 1" in m.content and m)
    job = await store.get(1)
    assert [(lora.name, lora.strength) for lora in job.params.loras] == [("style", 0.8), ("ink", 1.0)]
    assert job.params.loras[1].sha256 == file_sha256(bot_env.settings.lora_dir / "ink.safetensors")
    video = await fake.wait_for(lambda: _video_message(fake, 1), 180)
    assert "LoRA style 0.8, LoRA ink 1" in video.content, video.content
    await _delivered(store, 1, fake)
    reroll = await fake.click("framepack:reroll:1", STRANGER, video)
    await reroll.wait_response()
    await fake.wait_for(lambda: (m := reroll.original()) and "Job 2" in m.content and m)
    assert (await store.get(2)).params.loras == job.params.loras


@pytest.mark.parametrize(("options", "message"), [
    ({"lora1": "nope"}, "There is no LoRA named 'nope'. LoRAs here: broken, ink, style."),
    ({"lora1": "style", "strength1": -7.5}, "The LoRA style's strength must be between -4 and 4, not -7.5."),
    ({"strength2": 0.5}, "strength2 goes with lora2"),
    ({"lora1": "style", "lora2": "style"}, "The LoRA style is named twice"),
])
async def test_bad_lora_options_are_refused_and_create_nothing(with_loras, options, message):
    interaction = await with_loras.animate(**options)
    assert message in await with_loras.ephemeral_answer(interaction)
    assert await with_loras.store.queue_length() == 0 and not with_loras.store.files.root.exists()


async def test_more_than_three_loras_in_the_modal_caption_are_refused(with_loras):
    bot_env = with_loras
    message = bot_env.fake.post_user_message(OWNER, "look", attachments=[bot_env.picture()])
    await (await bot_env.fake.message_command("Animate this image", OWNER, message)).wait_response()
    submitted = await bot_env.fake.submit_modal(None, OWNER, {"prompt": "a cat --lora style --lora ink --lora broken "
                                                          "--lora x", "seconds": ""})
    await submitted.wait_response()
    assert "A job takes at most 3 LoRAs, not 4." in await bot_env.ephemeral_answer(submitted)
    assert await bot_env.store.queue_length() == 0


async def test_admin_loras_lists_each_file_with_its_check_and_is_for_the_bots_admins(with_loras):
    fake = with_loras.fake
    refused = await fake.slash_command("admin", STRANGER, subcommand="loras")
    await refused.wait_response()
    assert "Only the bot's admins" in await with_loras.ephemeral_answer(refused)
    asked = await fake.slash_command("admin", ADMIN, subcommand="loras")
    listing = await fake.wait_for(lambda: next((m for m in asked.followups() if "LoRAs in" in m.content), None), 180)
    assert listing.ephemeral
    assert "broken: refused: broken.safetensors is not a safetensors file" in listing.content, listing.content
    assert "ink: ok, " in listing.content and "style: ok, " in listing.content
