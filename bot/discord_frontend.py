"""Discord: `/animate` with a picture becomes a job; progress and the video come back in the channel.

discord.py 2 with application commands. Every interaction is answered well inside Discord's 3
seconds: the cheap checks (declared type and size, limits, quota) run first and refuse with an
ephemeral message; only then is the reply deferred and the picture downloaded.

The job's status message is the interaction's reply. While the interaction token is fresh (15
minutes) it is edited through the token; after that, or after a restart, through the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import aiohttp
import discord
import yarl
from discord import app_commands

from bot import texts
from bot.discord_extend import DiscordExtensions
from bot.discord_views import (
    CancelButton,
    ExtendButton,
    PromptModal,
    RerollButton,
    animate_again_view,
    cancel_view,
    reroll_view,
)
from bot.downloads import download_capped
from bot.loras import chosen_loras, lora_listing, lora_slots, warm_hashes
from bot.options import Request, job_params, new_seed, parse_caption
from bot.video_info import NO_VIDEO, is_video_name, video_info
from bot.watcher import STOP_GRACE_SECONDS, Frontend, Undeliverable, Watcher
from storage.files import JobFiles
from storage.inputs import InputError, quoted
from storage.jobs import Enqueued, GuidePictures, Job, JobLora, JobParams, JobPictures, JobState, NewJob
from storage.limits import LIMIT_NAMES, Limits
from storage.lora_catalog import matching_names
from storage.settings import Settings
from storage.store import JobStore

log = logging.getLogger(__name__)

PLATFORM = "discord"
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # unboosted servers and DMs, when an interaction does not say
EDIT_SECONDS = 5.0  # Discord allows about 5 message edits per 5 s per channel; previews also upload a GIF
TOKEN_SECONDS = 14 * 60  # interaction tokens expire after 15 minutes
DOWNLOAD_SECONDS = 60.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
SOMETHING_WRONG = "Something went wrong on my side. /queue shows what is queued."
# A job's status that could not be shown when it was queued: the watcher's next progress shows it.
UNPOSTED = "unposted"
EXAMPLE = '/animate image:<your picture> prompt:"The girl dances gracefully, with clear movements" seconds:5'
SHARED_LIMITS = ("Limits are shared by every server the bot is in, so only the bot's own admins "
                 "(DISCORD_ADMIN_USER_IDS) can change them.")


def is_permanent(error: Exception) -> bool:
    """Discord errors that trying again cannot fix: no access, or the channel or message is gone."""
    return isinstance(error, (discord.Forbidden, discord.NotFound))


def _ids(raw: str) -> set[int]:
    return {int(part) for part in raw.replace(" ", ",").split(",") if part.strip()}


def declared_picture(attachment: discord.Attachment) -> bool:
    """What Discord declares (the content type, else the file name) says it is a picture."""
    declared = (attachment.content_type or "").split(";")[0].strip().lower()
    if declared:
        return declared.startswith("image/")
    return Path(attachment.filename).suffix.lower() in IMAGE_SUFFIXES


def check_attachment(attachment: discord.Attachment, limits: Limits) -> None:
    """Refuse from what Discord declares, before a byte is downloaded; the decode proves the rest."""
    if not declared_picture(attachment):
        raise InputError(f"{attachment.filename} is not a picture. Attach a PNG, JPEG or WebP image.")
    if attachment.size > limits.max_image_bytes:
        raise InputError(f"The picture is {attachment.size / 1e6:.1f} MB; the limit is "
                         f"{limits.max_image_bytes / 1e6:g} MB.")
    if attachment.width and attachment.height and attachment.width * attachment.height > limits.max_image_pixels:
        raise InputError(f"The picture is {attachment.width}x{attachment.height}; the limit is "
                         f"{limits.max_image_pixels / 1e6:g} megapixels.")


Slot = tuple[discord.Attachment | None, float | None]


def keyframe_slots(slots: list[Slot]) -> list[tuple[float, discord.Attachment]]:
    """The (seconds, picture) keyframes of /animate_keyframes; each picture needs its second and each second a
    picture."""
    keyframes = []
    for number, (picture, at) in enumerate(slots, start=1):
        if (picture is None) != (at is None):
            raise InputError(f"keyframe{number} and at{number} go together: the picture and its second in the video.")
        if picture is not None:
            keyframes.append((at, picture))
    return keyframes


class FramePackClient(discord.Client):
    def __init__(self, frontend: DiscordBot):
        # No privileged intents: slash commands, buttons and modals need none.
        super().__init__(intents=discord.Intents(guilds=True))
        self.framepack = frontend
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        await self.framepack.setup()


class DiscordBot:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.admins = _ids(settings.discord_admin_user_ids)
        self.guild_ids = _ids(settings.discord_guild_ids)
        self.files = JobFiles(settings.data_dir)
        self.client = FramePackClient(self)
        self.edit_seconds = EDIT_SECONDS
        self.interactions: dict[int, tuple[discord.Interaction, float]] = {}  # job id -> (its interaction, expiry)
        self.session: aiohttp.ClientSession | None = None
        self.ready = asyncio.Event()
        self.watcher = Watcher(store, Frontend(PLATFORM, self.show_progress, self.deliver,
                                               lambda job: self.edit_seconds,
                                               notify_admins=self.notify_admins if self.admins else None,
                                               is_permanent=is_permanent))
        self.extensions = DiscordExtensions(self)
        self._add_commands()
        self.client.tree.on_error = self.on_command_error

    # ----- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        discord.http.Route.BASE = self.settings.discord_api_url.rstrip("/")
        async with self.client:
            connection = asyncio.create_task(self.client.start(self.settings.discord_token))
            stopping = asyncio.create_task(stop.wait())
            watching = asyncio.create_task(self._watch(stop))
            try:
                await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and self.ready.is_set():  # the watcher ends after the delivery it is in
                    await asyncio.wait({watching, connection}, timeout=STOP_GRACE_SECONDS,
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stopping, watching):
                    task.cancel()
                await asyncio.gather(stopping, watching, return_exceptions=True)
        connection.cancel()
        ended = (await asyncio.gather(connection, return_exceptions=True))[0]
        if self.session:
            await self.session.close()
        if not stop.is_set():  # the connection ended on its own: `serve` logs why and starts a new one
            raise ended if isinstance(ended, Exception) else ConnectionError("the Discord connection closed")

    async def _watch(self, stop: asyncio.Event) -> None:
        await self.ready.wait()  # deliveries need a logged-in client
        await self.watcher.run(stop)

    async def setup(self) -> None:
        """Runs once logged in, before the gateway connects."""
        self.session = aiohttp.ClientSession()
        self.client.add_dynamic_items(CancelButton, RerollButton, ExtendButton)
        # The gateway's address comes from the API server, so a proxy or a test server works too.
        _, url, _ = await self.client.http.get_bot_gateway()
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        try:
            await self._sync_commands()
        except discord.HTTPException as error:  # Discord keeps the last synced commands: carry on with those
            log.warning("discord: could not sync the commands (%s); the previous ones stay in place", error)
        self.ready.set()

    async def _sync_commands(self) -> None:
        tree = self.client.tree
        if self.guild_ids:
            for guild_id in sorted(self.guild_ids):
                guild = discord.Object(guild_id)
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
        else:
            await tree.sync()
        log.info("discord: commands synced to %s", sorted(self.guild_ids) or "every server (global)")

    # ----- commands -------------------------------------------------------------------------------

    def _add_commands(self) -> None:
        tree = self.client.tree

        @tree.command(name="animate", description="Animate a picture into a video with FramePack")
        @app_commands.describe(
            image="The picture to animate", prompt="What happens; timed: [0s: a cat sits] [3s: the cat jumps]",
            seconds="Length of the video in seconds", variant="original (anti-drifting) or f1 (forward)",
            seed="The same seed, picture and prompt give the same video", steps="Sampling steps per section",
            fast="About twice as fast, with small visible changes (TeaCache)",
            end_image="The picture the video ends on (original variant)",
            end_strength="How strongly the end picture pulls, above 0 up to 1 (default 1)",
            negative="What to keep out of the video (needs cfg above 1)",
            cfg="Real CFG, 1 (off) to 32; above 1 doubles the render time", loop="End on the start picture",
            lora1="A LoRA (style, character) from the bot's folder", strength1="lora1's strength (default 1)",
            lora2="A second LoRA", strength2="lora2's strength (default 1)",
            lora3="A third LoRA", strength3="lora3's strength (default 1)",
        )
        async def animate(interaction: discord.Interaction, image: discord.Attachment, prompt: str,
                          seconds: app_commands.Range[float, 1, 120] | None = None,
                          variant: Literal["original", "f1"] | None = None,
                          seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
                          steps: app_commands.Range[int, 1, 100] | None = None, fast: bool = False,
                          end_image: discord.Attachment | None = None, end_strength: float | None = None,
                          negative: str | None = None, cfg: float | None = None, loop: bool = False,
                          lora1: str | None = None, strength1: float | None = None, lora2: str | None = None,
                          strength2: float | None = None, lora3: str | None = None,
                          strength3: float | None = None) -> None:
            try:
                loras = lora_slots([(lora1, strength1), (lora2, strength2), (lora3, strength3)])
            except InputError as error:
                await interaction.response.send_message(str(error), ephemeral=True)
                return
            request = Request(prompt=prompt.strip(), seconds=seconds, seed=seed, steps=steps, variant=variant,
                              fast=fast, negative=(negative or "").strip(), cfg=cfg, loop=loop,
                              end_strength=end_strength, loras=loras)
            await self.submit_attachments(interaction, request, image, end_image)

        for option in ("lora1", "lora2", "lora3"):
            animate.autocomplete(option)(self.complete_lora)

        @tree.command(name="animate_keyframes", description="Animate a picture through keyframes at given seconds")
        @app_commands.describe(
            image="The start picture", prompt="What happens in the video",
            keyframe1="A picture the video passes through", at1="Its second in the video, e.g. 2.5",
            end_image="The picture the video ends on", seconds="Length of the video in seconds",
            seed="The same seed, pictures and prompt give the same video",
        )
        async def animate_keyframes(interaction: discord.Interaction, image: discord.Attachment, prompt: str,
                                    keyframe1: discord.Attachment, at1: float,
                                    keyframe2: discord.Attachment | None = None, at2: float | None = None,
                                    keyframe3: discord.Attachment | None = None, at3: float | None = None,
                                    keyframe4: discord.Attachment | None = None, at4: float | None = None,
                                    end_image: discord.Attachment | None = None,
                                    seconds: app_commands.Range[float, 1, 120] | None = None,
                                    seed: app_commands.Range[int, 0, 2**53 - 1] | None = None) -> None:
            slots = [(keyframe1, at1), (keyframe2, at2), (keyframe3, at3), (keyframe4, at4)]
            try:
                keyframes = keyframe_slots(slots)
            except InputError as error:
                await interaction.response.send_message(str(error), ephemeral=True)
                return
            request = Request(prompt=prompt.strip(), seconds=seconds, seed=seed)
            await self.submit_attachments(interaction, request, image, end_image, keyframes)

        @tree.context_menu(name="Animate this image")
        async def animate_message(interaction: discord.Interaction, message: discord.Message) -> None:
            await self.on_animate_message(interaction, message)

        @tree.context_menu(name="Video info")
        async def video_info_message(interaction: discord.Interaction, message: discord.Message) -> None:
            await self.on_video_info(interaction, message)

        @tree.command(name="queue", description="Your videos in the queue, with their place and time")
        async def queue(interaction: discord.Interaction) -> None:
            jobs = await self.store.user_jobs(PLATFORM, str(interaction.user.id))
            text = texts.queue_summary(jobs, await self.store.positions(), await self.store.queue_length(),
                                       await self.store.worker_status())
            await interaction.response.send_message(text, ephemeral=True)

        @tree.command(name="cancel", description="Cancel one of your videos (your newest when no number is given)")
        @app_commands.describe(job="The job number")
        async def cancel(interaction: discord.Interaction, job: int | None = None) -> None:
            if job is None:
                mine = await self.store.user_jobs(PLATFORM, str(interaction.user.id))
                if not mine:
                    await interaction.response.send_message("You have no job to cancel.", ephemeral=True)
                    return
                job = mine[-1].id
            await self._cancel(interaction, job)

        @tree.command(name="help", description="What this bot does, its limits, and an example")
        async def help_(interaction: discord.Interaction) -> None:
            text = texts.help_text(await self.store.get_limits(), EXAMPLE, discord=True)
            await interaction.response.send_message(text, ephemeral=True)

        admin = app_commands.Group(name="admin", description="The bot's limits (admins only)",
                                   default_permissions=discord.Permissions(manage_guild=True))

        @admin.command(name="limits", description="Show the current limits")
        async def show_limits(interaction: discord.Interaction) -> None:
            if self.is_admin(interaction) or self.moderated_guild(interaction) is not None:
                await interaction.response.send_message(texts.limits(await self.store.get_limits()), ephemeral=True)
            else:
                await interaction.response.send_message("Only the bot's admins can do that.", ephemeral=True)

        @admin.command(name="workers", description="Each worker's host, GPU, memory plan, speed and job")
        async def show_workers(interaction: discord.Interaction) -> None:
            text = texts.workers_list(await self.store.workers()) if self.is_admin(interaction) else \
                "Only the bot's admins can do that."
            await interaction.response.send_message(text[:2000], ephemeral=True)

        @admin.command(name="set-limit", description="Change a limit for everyone (the bot's own admins)")
        @app_commands.describe(name="Which limit", value="The new value, e.g. 30 or original,f1")
        @app_commands.choices(name=[app_commands.Choice(name=n, value=n) for n in LIMIT_NAMES])
        async def set_limit(interaction: discord.Interaction, name: str, value: str) -> None:
            if not self.is_admin(interaction):
                refusal = SHARED_LIMITS if self.moderated_guild(interaction) else "Only the bot's admins can do that."
                await interaction.response.send_message(refusal, ephemeral=True)
                return
            try:
                limits = await self.store.set_limit(name, value, f"discord:{interaction.user.id}")
            except InputError as error:
                await interaction.response.send_message(str(error), ephemeral=True)
                return
            await interaction.response.send_message("Limit changed.\n" + texts.limits(limits), ephemeral=True)

        @admin.command(name="loras", description="The LoRA files and whether each loads (the bot's own admins)")
        async def show_loras(interaction: discord.Interaction) -> None:
            if not self.is_admin(interaction):  # the files are the server's, shared by every guild
                await interaction.response.send_message("Only the bot's admins can do that.", ephemeral=True)
                return
            await interaction.response.defer(ephemeral=True, thinking=True)  # the check takes some seconds
            await interaction.followup.send((await lora_listing(self.settings))[:2000], ephemeral=True)

        tree.add_command(admin)
        self.extensions.add_command(tree)

    async def on_command_error(self, interaction: discord.Interaction, error: Exception) -> None:
        if isinstance(error, app_commands.TransformerError):  # e.g. a number outside the option's range
            await self.tell(interaction, f"{error.value!r:.60} is not a value this option takes. /help lists them.")
            return
        log.error("discord: command failed", exc_info=error)
        await self.tell(interaction, SOMETHING_WRONG)

    async def tell(self, interaction: discord.Interaction, text: str) -> None:
        """An ephemeral answer, whether or not the interaction was answered already."""
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)

    def is_admin(self, interaction: discord.Interaction) -> bool:
        """The bot's own admins (DISCORD_ADMIN_USER_IDS): every job and the shared limits, everywhere.
        Checked here, not only through Discord's command permissions, which server owners can change."""
        return interaction.user.id in self.admins

    def moderated_guild(self, interaction: discord.Interaction) -> str | None:
        """The server a member with Manage Server moderates (its jobs only); None elsewhere and in DMs."""
        if (self.settings.discord_manage_server_admins and interaction.guild_id is not None
                and interaction.permissions.manage_guild):
            return str(interaction.guild_id)
        return None

    async def _cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        outcome = await self.store.cancel(job_id, PLATFORM, str(interaction.user.id),
                                          is_admin=self.is_admin(interaction),
                                          moderated_guild=self.moderated_guild(interaction))
        await interaction.response.send_message(texts.CANCEL_OUTCOMES[outcome], ephemeral=True)

    # ----- making jobs ----------------------------------------------------------------------------

    def new_job(self, interaction: discord.Interaction, prompt: str, params: JobParams,
                guides: GuidePictures | None = None) -> NewJob:
        return NewJob(
            platform=PLATFORM, chat_id=str(interaction.channel_id), user_id=str(interaction.user.id),
            prompt=prompt, params=params, user_name=interaction.user.name,
            guild_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
            guides=guides or GuidePictures(),
        )

    def params_for(self, interaction: discord.Interaction, request: Request, loras: tuple[JobLora, ...] = (),
                   limits: Limits | None = None) -> JobParams:
        upload_limit = getattr(interaction, "filesize_limit", None) or DEFAULT_UPLOAD_LIMIT
        return job_params(request, self.settings, upload_limit, loras=loras, limits=limits)

    async def complete_lora(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """The LoRA names in LORA_DIR that fit what was typed (Discord shows up to 25)."""
        names = await asyncio.to_thread(matching_names, self.settings.lora_dir, current)
        asyncio.get_running_loop().run_in_executor(None, warm_hashes, self.settings.lora_dir, names[:3])
        return [app_commands.Choice(name=name[:100], value=name[:100]) for name in names]

    async def submit_attachments(self, interaction: discord.Interaction, request: Request,
                                 image: discord.Attachment, end: discord.Attachment | None = None,
                                 keyframes: list[tuple[float, discord.Attachment]] | None = None) -> None:
        """The start picture, and an end picture and keyframes (seconds, picture) when given, as one job."""
        limits = await self.store.get_limits()
        keyframes = keyframes or []
        guides = GuidePictures(end=end is not None, keyframes=tuple(at for at, _ in keyframes))

        def check() -> None:
            if not request.prompt:
                raise InputError("The prompt is empty. Example: " + EXAMPLE)
            for attachment in [image, *([end] if end else []), *(picture for _, picture in keyframes)]:
                check_attachment(attachment, limits)

        async def fetch() -> JobPictures:
            async def get(attachment: discord.Attachment) -> bytes:
                return await download_capped(self.session, attachment.url, limits.max_image_bytes, DOWNLOAD_SECONDS)

            pictures = [await get(picture) for _, picture in keyframes]
            return JobPictures(await get(image), await get(end) if end else None, tuple(pictures))

        try:
            loras = await chosen_loras(request, self.settings)  # hashes kept: a file seen before is not read again
        except InputError as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        job = self.new_job(interaction, request.prompt, self.params_for(interaction, request, loras, limits), guides)
        await self.queue_job(interaction, job, fetch, check)

    async def queue_job(self, interaction: discord.Interaction, job: NewJob,
                        fetch_picture: Callable[[], Awaitable[bytes | JobPictures | None]],
                        check: Callable[[], None] = lambda: None) -> None:
        """Refuse on the cheap checks at once, else defer, fetch the picture, enqueue and show the status."""
        try:
            check()
            await self.store.check_request(job)
        except texts.REFUSED as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        enqueue = self.store.enqueue_extension if job.extends is not None else self.store.enqueue

        async def fetch_and_enqueue() -> Enqueued:
            return await enqueue(job, await fetch_picture())

        await self.queue_after_defer(interaction, fetch_and_enqueue)

    async def queue_after_defer(self, interaction: discord.Interaction,
                                enqueue: Callable[[], Awaitable[Enqueued]]) -> None:
        """Under the public "thinking" reply: queue the job and show its status there. A refusal, or a failure
        before the job is queued, is said to the person alone: the thinking reply goes, where a follow-up would
        have shown it to the channel."""
        try:
            enqueued = await enqueue()
        except texts.REFUSED as error:
            await self.refuse_after_defer(interaction, str(error))
            return
        except Exception as error:
            log.error("discord: queueing a job failed", exc_info=error)
            await self.refuse_after_defer(interaction, SOMETHING_WRONG)
            return
        await self.show_queued(interaction, enqueued)

    async def refuse_after_defer(self, interaction: discord.Interaction, text: str) -> None:
        """Only the person sees why: the public "thinking" reply goes, an ephemeral one says why."""
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)

    async def show_queued(self, interaction: discord.Interaction, enqueued: Enqueued) -> None:
        """The queued job's status in the thinking reply. The job is queued whatever happens here: an edit
        Discord fails is made by the progress later (through the same token while it lasts), never answered
        with an error (a retry by the person would queue the job twice)."""
        job_id = enqueued.job_id
        self.interactions[job_id] = (interaction, time.monotonic() + TOKEN_SECONDS)
        text = texts.queued(job_id, enqueued.position, enqueued.eta_seconds)
        try:
            message = await interaction.edit_original_response(content=text, view=cancel_view(job_id))
        except discord.HTTPException as error:
            log.warning("discord: job %d is queued; showing its status failed (%s) and comes with the progress",
                        job_id, error)
            await self.store.set_status_message(job_id, UNPOSTED)
            return
        await self.store.set_status_message(job_id, str(message.id))

    async def on_animate_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        pictures = [a for a in message.attachments if declared_picture(a)]
        if not pictures:
            await interaction.response.send_message("That message has no picture attached.", ephemeral=True)
            return
        try:
            check_attachment(pictures[0], await self.store.get_limits())
        except InputError as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        await interaction.response.send_modal(PromptModal(pictures[0]))

    async def on_video_info(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The settings a video says it was made with, for the asker alone, with "Animate again" when the job's
        pictures are still stored."""
        # 1. A video attachment within the download limit: checked before anything is downloaded.
        videos = [a for a in message.attachments if is_video_name(a.filename, a.content_type)]
        if not videos:
            await interaction.response.send_message("That message has no video attached. " + NO_VIDEO, ephemeral=True)
            return
        limit = self.settings.max_info_video_bytes
        if videos[0].size > limit:
            text = f"The video is {videos[0].size / 1e6:.1f} MB; I can read videos of up to {limit / 1e6:g} MB."
            await interaction.response.send_message(text, ephemeral=True)
            return
        # 2. Download it and read its settings.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await download_capped(self.session, videos[0].url, limit, DOWNLOAD_SECONDS, what="video")
        except InputError as error:
            await interaction.followup.send(str(error), ephemeral=True)
            return
        info = await video_info(data, self.store, self.files, PLATFORM)
        # 3. Answer, with the button when the job can run again.
        extra = {"view": animate_again_view(info.again_job_id)} if info.again_job_id is not None else {}
        await interaction.followup.send(info.text, ephemeral=True, **extra)

    async def on_prompt_modal(self, interaction: discord.Interaction, attachment: discord.Attachment,
                              prompt: str, seconds: str) -> None:
        try:
            request = parse_caption(prompt)
            if request.end or request.keyframe_at:  # the form carries one picture: the message's
                raise InputError("--end and --at need their pictures: use /animate with end_image, or "
                                 "/animate_keyframes.")
            if seconds.strip():
                request = Request(**{**request.__dict__, "seconds": float(seconds.replace(",", "."))})
        except ValueError as error:  # InputError is a ValueError
            text = str(error) if isinstance(error, InputError) else f"Seconds takes a number, not {quoted(seconds)}."
            await interaction.response.send_message(text, ephemeral=True)
            return
        await self.submit_attachments(interaction, request, attachment)

    async def on_component_error(self, interaction: discord.Interaction, error: Exception) -> None:
        """A button or modal whose handler failed: logged, and the person gets an answer, not "interaction failed"."""
        log.error("discord: a button or modal failed", exc_info=error)
        await self.tell(interaction, SOMETHING_WRONG)

    async def on_cancel_button(self, interaction: discord.Interaction, job_id: int) -> None:
        await self._cancel(interaction, job_id)

    async def on_reroll_button(self, interaction: discord.Interaction, job_id: int) -> None:
        """Same picture and prompt, a new seed, queued for whoever clicked."""
        old = await self.store.get(job_id)
        if old is None or old.platform != PLATFORM:
            await interaction.response.send_message("That video's picture is no longer stored.", ephemeral=True)
            return
        if old.extends is not None:
            await self.extensions.reroll(interaction, old)
            return
        await self.store.fetch_inputs(job_id)
        try:
            pictures = await asyncio.to_thread(self.files.read_pictures, job_id, old.guides)
        except FileNotFoundError:
            await interaction.response.send_message("That video's picture is no longer stored.", ephemeral=True)
            return
        # Every setting but the seed is kept (end picture, keyframes, cfg, negative prompt, loop); the upload
        # limit is the clicker's chat's.
        params = dataclasses.replace(old.params, seed=new_seed(),
                                     upload_limits=self.params_for(interaction, Request(old.prompt)).upload_limits)
        job = self.new_job(interaction, old.prompt, params, old.guides)
        await self.queue_job(interaction, job, lambda: asyncio.sleep(0, pictures))

    # ----- progress and delivery (called by the watcher) -------------------------------------------

    def _fresh_interaction(self, job_id: int) -> discord.Interaction | None:
        interaction, expiry = self.interactions.get(job_id, (None, 0.0))
        if interaction is not None and time.monotonic() < expiry:
            return interaction
        self.interactions.pop(job_id, None)
        return None

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(int(job.chat_id))

    async def _edit_status(self, job: Job, fields: Callable[[], dict]) -> None:
        """Edit the status message through the interaction token while fresh, else through the channel.

        `fields` makes the edit's arguments anew for each attempt: an upload consumes its discord.File.
        """
        interaction = self._fresh_interaction(job.id)
        if interaction is not None:
            try:
                message = await interaction.edit_original_response(**fields())
            except discord.HTTPException as error:
                if error.code == 10008:  # Unknown Message: deleted, the channel would not find it either
                    raise
                log.info("discord: job %d: the interaction token failed (%s); using the channel", job.id, error)
                self.interactions.pop(job.id, None)
            else:
                if job.status_message == UNPOSTED:  # shown at last: now its id is known
                    await self.store.set_status_message(job.id, str(message.id))
                return
        if job.status_message == UNPOSTED:  # never shown, and no token to show it: a message of its own
            await self._post_status(job, fields)
            return
        await self._channel(job).get_partial_message(int(job.status_message)).edit(**fields())

    async def show_progress(self, job: Job, text: str, preview: str | None) -> None:
        def fields() -> dict:
            made: dict = {"content": text, "view": cancel_view(job.id)}
            if preview:
                made["attachments"] = [discord.File(preview, filename=f"job{job.id}_preview.gif")]
            return made

        try:
            await self._edit_status(job, fields)
        except discord.NotFound:  # the person deleted the message: post a new one
            self.interactions.pop(job.id, None)
            await self._post_status(job, fields)
        except discord.Forbidden as error:
            log.info("discord: progress for job %d not shown: %s", job.id, error)

    async def _post_status(self, job: Job, fields: Callable[[], dict]) -> None:
        """A new status message in the job's channel."""
        message = fields()
        files = message.pop("attachments", [])
        try:
            sent = await self._channel(job).send(files=files, **message)
        except discord.HTTPException as error:  # cannot post here: carry on silently, deliver at the end
            log.info("discord: no progress message for job %d: %s", job.id, error)
            await self.store.set_status_message(job.id, None)
            return
        await self.store.set_status_message(job.id, str(sent.id))

    async def deliver(self, job: Job) -> None:
        limit = job.params.upload_limits[0] if job.params.upload_limits else DEFAULT_UPLOAD_LIMIT
        content = f"<@{job.user_id}> {texts.finished(job)}"
        path = job.video_for_limit(limit) if job.state is JobState.DONE else None
        lost = job.state is JobState.DONE and not (path and os.path.isfile(path))
        if lost:  # tell the person rather than nothing, then record why it was not delivered
            content, path = f"<@{job.user_id}> " + texts.VIDEO_LOST.format(job=job.id), None
        if path and os.path.getsize(path) > limit:
            content += texts.OVER_UPLOAD_LIMIT.format(mb=limit / 1e6)
            path = None
        message: dict = {
            "content": content[:2000],
            "allowed_mentions": discord.AllowedMentions(everyone=False, roles=False,
                                                        users=[discord.Object(int(job.user_id))]),
        }
        if job.state is JobState.DONE and not lost:
            message["view"] = reroll_view(job.id)

        def files() -> list[discord.File]:  # a File is consumed by one upload attempt
            return [discord.File(path, filename=f"framepack_{job.id}.mp4")] if path else []

        reference = None
        if job.status_message and job.status_message != UNPOSTED:
            reference = discord.MessageReference(message_id=int(job.status_message), channel_id=int(job.chat_id),
                                                 fail_if_not_exists=False)
        try:
            try:
                await self._channel(job).send(files=files(), reference=reference, **message)
            except discord.HTTPException as error:
                if error.status != 413 or not path:
                    raise
                # The server's limit is lower than when the job was queued (boosts lapsed): no retry gets the file
                # through, the text still can.
                log.warning("discord: job %d: the video was refused as too large (%s)", job.id, error)
                refused = texts.REFUSED_AS_TOO_LARGE.format(mb=os.path.getsize(path) / 1e6)
                message["content"], path = (content + refused)[:2000], None
                await self._channel(job).send(files=[], reference=reference, **message)
        except (discord.Forbidden, discord.NotFound):  # no Send Messages there, or the channel is gone
            await self._deliver_elsewhere(job, files, message)
        if job.status_message and job.status_message != UNPOSTED:
            with contextlib.suppress(discord.HTTPException):
                await self._edit_status(job, lambda: {"content": texts.finished(job)[:2000], "attachments": [],
                                                      "view": None})
        self.interactions.pop(job.id, None)
        if lost:
            raise Undeliverable("the video file is missing")

    async def _deliver_elsewhere(self, job: Job, files, message: dict) -> None:
        """The interaction's follow-up while its token lasts, else a direct message; else give up, logged."""
        interaction = self._fresh_interaction(job.id)
        if interaction is not None:
            try:
                await interaction.followup.send(files=files(), **message)
                return
            except discord.HTTPException as error:
                log.info("discord: job %d: follow-up failed (%s); trying a direct message", job.id, error)
        try:
            user = await self.client.fetch_user(int(job.user_id))
            await user.send(files=files(), **message)
        except (discord.Forbidden, discord.NotFound) as error:
            raise Undeliverable(f"no channel, follow-up or direct message reaches the person ({error})") from None

    async def notify_admins(self, text: str) -> None:
        """Every admin who can be reached; raises when none could (the watcher tries the notice again)."""
        failures = []
        for admin in sorted(self.admins):
            try:
                await (await self.client.fetch_user(admin)).send(text[:2000])
            except discord.HTTPException as error:
                log.warning("discord: could not tell admin %d (%s)", admin, error)
                failures.append(error)
        if failures and len(failures) == len(self.admins):
            raise failures[-1]


async def run(settings: Settings, store: JobStore, stop: asyncio.Event) -> None:
    await DiscordBot(settings, store).run(stop)
