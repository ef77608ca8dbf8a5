"""Discord: extending a video. The Extend button under a delivered video (a form asks for the seconds and a
prompt) and `/extend` with a video attachment or a job number (a video of the bot's attached again continues
from its job); the job then goes through the frontend's own queueing, progress and delivery like any other."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
import discord
from discord import app_commands

from bot import texts
from bot.discord_views import ExtendModal
from bot.downloads import download_capped
from bot.extending import extension_job, is_video, job_of_video, parse_extension, plain_prompt, rerolled_extension
from bot.options import Request
from storage.files import JobFiles
from storage.inputs import InputError, quoted
from storage.jobs import Enqueued, Extends, GuidePictures, Job, JobParams, JobPictures, NewJob
from storage.settings import Settings
from storage.store import JobStore

PLATFORM = "discord"
DOWNLOAD_SECONDS = 120.0


class ExtensionHost(Protocol):
    """What the extensions take from their frontend (bot/discord_frontend.py's DiscordBot): its stores, and
    its way of making, queueing and answering for a job."""

    settings: Settings
    store: JobStore
    files: JobFiles
    session: aiohttp.ClientSession | None

    def new_job(self, interaction: discord.Interaction, prompt: str, params: JobParams,
                guides: GuidePictures | None = None) -> NewJob: ...
    def params_for(self, interaction: discord.Interaction, request: Request) -> JobParams: ...
    async def queue_job(self, interaction: discord.Interaction, job: NewJob,
                        fetch_picture: Callable[[], Awaitable[bytes | JobPictures | None]]) -> None: ...
    async def queue_after_defer(self, interaction: discord.Interaction,
                                enqueue: Callable[[], Awaitable[Enqueued]]) -> None: ...
    async def tell(self, interaction: discord.Interaction, text: str) -> None: ...


class DiscordExtensions:
    def __init__(self, bot: ExtensionHost):
        self.bot = bot

    def add_command(self, tree: app_commands.CommandTree) -> None:
        @tree.command(name="extend", description="Continue a video by some seconds")
        @app_commands.describe(
            video="An MP4 or WebM video to continue", job="Or the number of one of the bot's jobs to continue",
            seconds="Seconds to add", prompt="What happens next (a job's own prompt when left out)",
            seed="A job's own seed continues it exactly", fast="About twice as fast (TeaCache)",
        )
        async def extend(interaction: discord.Interaction, video: discord.Attachment | None = None,
                         job: app_commands.Range[int, 1, 2**53 - 1] | None = None,
                         seconds: app_commands.Range[float, 1, 120] | None = None, prompt: str | None = None,
                         seed: app_commands.Range[int, 0, 2**53 - 1] | None = None, fast: bool = False) -> None:
            request = Request(prompt=(prompt or "").strip(), seconds=seconds, seed=seed, fast=fast)
            await self.on_command(interaction, video, job, request)

    # ----- the ways in ----------------------------------------------------------------------------

    async def on_command(self, interaction: discord.Interaction, video: discord.Attachment | None,
                         job_id: int | None, request: Request) -> None:
        if video is None and job_id is None:
            await self._tell(interaction, texts.EXTEND_USAGE_DISCORD)
        elif video is not None and job_id is not None:
            await self._tell(interaction, texts.EXTEND_ONE_SOURCE)
        elif video is not None:
            await self.extend_video(interaction, video, request)
        else:
            await self.extend_job(interaction, job_id, request)

    async def on_button(self, interaction: discord.Interaction, job_id: int) -> None:
        """Refuse at once what cannot be extended (removed files, not finished, another chat's); else ask."""
        try:
            await self.bot.store.check_request(await self._job_extension(interaction, job_id, Request("")))
        except texts.REFUSED as error:
            await self._tell(interaction, str(error))
            return
        await interaction.response.send_modal(ExtendModal(job_id))

    async def on_modal(self, interaction: discord.Interaction, job_id: int, seconds: str, prompt: str) -> None:
        try:
            request = parse_extension(prompt)
            if seconds.strip():
                request = dataclasses.replace(request, seconds=float(seconds.strip().rstrip("sS").replace(",", ".")))
        except ValueError as error:  # InputError is a ValueError
            await self._tell(interaction, str(error) if isinstance(error, InputError)
                             else texts.EXTEND_SECONDS.format(raw=quoted(seconds)))
            return
        await self.extend_job(interaction, job_id, request)

    async def reroll(self, interaction: discord.Interaction, old: Job) -> None:
        """Re-roll of an extension: the same source and prompt, a new seed."""
        try:
            video = await self._stored_video(old)
        except InputError as error:
            await self._tell(interaction, str(error))
            return
        job = rerolled_extension(self._base(interaction), old)
        await self.bot.queue_job(interaction, job, lambda: asyncio.sleep(0, video))

    # ----- the two sources ------------------------------------------------------------------------

    async def extend_job(self, interaction: discord.Interaction, job_id: int, request: Request) -> None:
        try:
            job = await self._job_extension(interaction, job_id, request)
        except texts.REFUSED as error:
            await self._tell(interaction, str(error))
            return
        await self.bot.queue_job(interaction, job, lambda: asyncio.sleep(0, None))

    async def extend_video(self, interaction: discord.Interaction, attachment: discord.Attachment,
                           request: Request) -> None:
        """A video this bot made (downloaded and attached again) continues from its job's kept latents when the
        person may extend that job, else from its frames like any video. What Discord declares is refused before
        a byte is downloaded; the bytes are checked at enqueue."""
        # 1. Refuse what the attachment declares, and a request the store would refuse, at once.
        try:
            self._check_declared(attachment)
            checked = None
            if request.prompt:  # a video sent without a prompt may still be one of ours: look inside first
                checked = self._video_extension(interaction, request, attachment)
                await self.bot.store.check_request(checked)
        except texts.REFUSED as error:
            await self._tell(interaction, str(error))
            return
        # 2. Answer within Discord's 3 seconds, then download and queue.
        await interaction.response.defer(thinking=True)

        async def download_and_enqueue() -> Enqueued:
            data = await download_capped(self.bot.session, attachment.url, self.bot.settings.max_extend_video_bytes,
                                         DOWNLOAD_SECONDS, what="video")
            return await self._enqueue_video(interaction, request, attachment, data, checked)

        await self.bot.queue_after_defer(interaction, download_and_enqueue)

    def _check_declared(self, attachment: discord.Attachment) -> None:
        limit = self.bot.settings.max_extend_video_bytes
        if not is_video(attachment.filename, attachment.content_type):
            raise InputError(texts.NOT_A_VIDEO)
        if attachment.size > limit:
            raise InputError(texts.video_too_big(attachment.size, limit))

    async def _enqueue_video(self, interaction: discord.Interaction, request: Request,
                             attachment: discord.Attachment, data: bytes, checked: NewJob | None) -> Enqueued:
        """The job extension when the video's metadata names a job of ours that this person may extend; else
        the video's frames, with that job's own prompt when none was given."""
        source = await job_of_video(data, self.bot.store, PLATFORM)
        if source is not None:
            try:
                job = await self._job_extension(interaction, source.id, request)
                return await self.bot.store.enqueue_extension(job)
            except texts.REFUSED:
                pass  # e.g. another chat's job: the copy they hold is still a video to extend from its frames
            if not request.prompt:
                request = dataclasses.replace(request, prompt=plain_prompt(source))
        job = checked or self._video_extension(interaction, request, attachment)
        return await self.bot.store.enqueue_extension(job, data)

    def _video_extension(self, interaction: discord.Interaction, request: Request,
                         attachment: discord.Attachment) -> NewJob:
        return extension_job(self._base(interaction), request, self.bot.settings,
                             Extends(video_name=attachment.filename[:200]))

    async def _job_extension(self, interaction: discord.Interaction, job_id: int, request: Request) -> NewJob:
        source = await self.bot.store.get(job_id)
        if source is None or source.platform != PLATFORM:
            raise InputError(f"There is no job {job_id} here.")
        return extension_job(self._base(interaction), request, self.bot.settings, Extends(job_id), source)

    def _base(self, interaction: discord.Interaction) -> NewJob:
        """Who asks, where, and the upload limit of their chat."""
        return self.bot.new_job(interaction, "", self.bot.params_for(interaction, Request("")))

    async def _stored_video(self, old: Job) -> bytes | None:
        if not old.extends.from_video:
            return None
        await self.bot.store.fetch_inputs(old.id)
        try:
            return await asyncio.to_thread(self.bot.files.source_video_path(old.id).read_bytes)
        except FileNotFoundError:
            raise InputError("That video is no longer stored; send it again with /extend.") from None

    async def _tell(self, interaction: discord.Interaction, text: str) -> None:
        await self.bot.tell(interaction, text)
