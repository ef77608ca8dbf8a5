"""LoRAs from Telegram: `--lora name:0.8` in the caption (checked against LORA_DIR before anything is queued),
the LoRAs in the delivered video's settings and kept by a re-roll, and the admins' `/admin loras`."""

from __future__ import annotations

import pytest
from helpers import picture_bytes, wait_for
from lora_files import write_lora
from test_telegram import ADMIN, OWNER, STRANGER, telegram  # noqa: F401  (the fake Telegram fixture)

from storage.lora_catalog import file_sha256


@pytest.fixture()
def with_loras(telegram, original_models):  # noqa: F811
    folder = telegram.settings.lora_dir
    write_lora(folder / "style.safetensors", original_models.transformer, "musubi-hunyuan", std=0.1)
    write_lora(folder / "ink.safetensors", original_models.transformer, "diffusers", std=0.1, seed=2)
    (folder / "broken.safetensors").write_bytes(b"\x00" * 64)  # listed, and refused by the check
    return telegram


def _said(text: str):
    return lambda p: text in p.get("text", "")


async def test_a_caption_with_loras_renders_with_them_and_a_reroll_keeps_them(with_loras):
    env = with_loras
    fake, store = env.fake, env.store
    env.start_worker()
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption="a cat waves --seconds 1.2 --lora style:0.8 --lora INK")
    await fake.wait_for("sendMessage", _said("next in line"))
    job = await store.get(1)
    assert [(lora.name, lora.strength) for lora in job.params.loras] == [("style", 0.8), ("ink", 1.0)]
    assert job.params.loras[0].sha256 == file_sha256(env.settings.lora_dir / "style.safetensors")
    video = await fake.wait_for("sendVideo", timeout=180)
    assert "LoRA style 0.8, LoRA ink 1" in video["caption"], video["caption"]

    async def delivered():
        return (await store.get(1)).delivered
    await wait_for(delivered)
    fake.click(OWNER, OWNER, 77, "reroll:1")
    await fake.wait_for("answerCallbackQuery", lambda p: "new seed" in p.get("text", ""))
    assert (await store.get(2)).params.loras == job.params.loras  # names, hashes and strengths: an exact re-roll


@pytest.mark.parametrize(("options", "message"), [
    ("--lora nope", "There is no LoRA named 'nope'. LoRAs here: broken, ink, style."),
    ("--lora style --lora ink --lora broken --lora style:2", "A job takes at most 3 LoRAs, not 4."),
    ("--lora style:9", "The LoRA style's strength must be between -4 and 4, not 9."),
    ("--lora style:loud", "--lora takes NAME or NAME:STRENGTH"),
    ("--lora style --lora style:0.5", "The LoRA style is named twice"),
])
async def test_bad_lora_picks_are_refused_and_create_nothing(with_loras, options, message):
    fake = with_loras.fake
    fake.send_photo(OWNER, OWNER, picture_bytes(), caption=f"a cat {options}")
    reply = await fake.wait_for("sendMessage", lambda p: int(p["chat_id"]) == OWNER, timeout=30)
    assert message in reply["text"], reply["text"]
    assert await with_loras.store.queue_length() == 0 and not fake.calls_to("getFile")


async def test_admin_loras_lists_each_file_with_its_check_and_is_for_admins_only(with_loras):
    fake = with_loras.fake
    fake.send_text(STRANGER, STRANGER, "/admin loras")
    await fake.wait_for("sendMessage", _said("Only the bot's admins can do that."))
    fake.send_text(ADMIN, ADMIN, "/admin")
    await fake.wait_for("sendMessage", _said("Usage: /admin loras"))
    fake.send_text(ADMIN, ADMIN, "/admin loras")
    listing = (await fake.wait_for("sendMessage", _said("LoRAs in"), timeout=180))["text"]
    assert "broken: refused: broken.safetensors is not a safetensors file" in listing, listing
    assert "ink: ok, " in listing and "style: ok, " in listing and " linears (sha256 " in listing
