"""LoRAs in the chats, the same on every platform: a person's picks checked before a job is queued, and the
admins' `/admin loras` listing. No chat library and no torch here: the picks are checked against the files in
LORA_DIR (storage/lora_catalog.py), the fit to the transformer by `python -m engine.lora_check` in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys

from bot import texts
from bot.options import Request
from storage.inputs import InputError
from storage.jobs import JobLora
from storage.lora_catalog import choose_loras, file_sha256, lora_names, lora_path
from storage.settings import Settings

log = logging.getLogger(__name__)

CHECK_SECONDS = 180.0  # importing torch and diffusers in the subprocess takes most of it


async def chosen_loras(request: Request, settings: Settings) -> tuple[JobLora, ...]:
    """The request's LoRAs with their files' hashes, or an InputError for the person (hashing runs in a thread)."""
    if not request.loras:
        return ()
    return await asyncio.to_thread(choose_loras, request.loras, settings.lora_dir)


async def lora_listing(settings: Settings) -> str:
    """Every file in LORA_DIR with check_lora's verdict: the linears it changes, or why it is refused."""
    if not await asyncio.to_thread(lora_names, settings.lora_dir):
        return texts.NO_LORAS.format(folder=settings.lora_dir)
    command = [sys.executable, "-m", "engine.lora_check", "--lora-dir", str(settings.lora_dir)]
    if settings.framepack_models_dir is not None:
        command += ["--models-dir", str(settings.framepack_models_dir)]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CHECK_SECONDS)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return texts.LORA_CHECK_FAILED.format(why=f"it took longer than {CHECK_SECONDS:g} s")
    if process.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {process.returncode}"]
        log.warning("lora check failed (exit %s): %s", process.returncode, err.decode(errors="replace")[-2000:])
        return texts.LORA_CHECK_FAILED.format(why=why[0][:500])
    return texts.lora_listing(settings.lora_dir, json.loads(out))


def lora_slots(slots: list[tuple[str | None, float | None]]) -> tuple[tuple[str, float], ...]:
    """Discord's lora1..3 and strength1..3 as (name, strength) picks; a strength needs its LoRA."""
    picks = []
    for number, (name, strength) in enumerate(slots, start=1):
        if name is None or not name.strip():
            if strength is not None:
                raise InputError(texts.LORA_STRENGTH_ALONE.format(number=number))
            continue
        picks.append((name.strip(), 1.0 if strength is None else strength))
    return tuple(picks)


def warm_hashes(lora_dir, names: list[str]) -> None:
    """Hash the files a person is being offered, so that the pick is checked within Discord's 3 seconds."""
    for name in names:
        with contextlib.suppress(OSError, InputError):
            file_sha256(lora_path(lora_dir, name))
