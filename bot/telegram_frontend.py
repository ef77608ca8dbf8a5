"""Telegram: a photo with a caption becomes a job; progress and the video come back as replies.

python-telegram-bot 22 (asyncio Application) talks to the Bot API at TELEGRAM_API_URL, so a
self-hosted Bot API server (bigger uploads) or a test server can stand in for Telegram's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputMediaAnimation, Message, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot import texts
from bot.albums import AlbumCollector
from bot.loras import chosen_loras, lora_listing
from bot.options import Request, album_guides, job_params, new_seed, parse_caption
from bot.telegram_addressing import command_text, mentions, without_mentions
from bot.telegram_extend import TelegramExtensions
from bot.video_info import is_video_name, video_info
from bot.watcher import Frontend, Undeliverable, Watcher
from storage.files import JobFiles
from storage.inputs import InputError
from storage.jobs import Enqueued, GuidePictures, Job, JobLora, JobParams, JobPictures, JobState, NewJob, parse_job_id
from storage.limits import Limits
from storage.settings import Settings
from storage.store import JobStore

log = logging.getLogger(__name__)

PLATFORM = "telegram"
MESSAGE_LIMIT = 4096  # characters in one Telegram message
# A job's status message that could not be posted when it was queued: the watcher's next progress posts it.
UNPOSTED = "t:unposted"
EXAMPLE = "Send a photo with a caption, e.g. \"The girl dances gracefully\" --seconds 5"
PRIVATE_EDIT_SECONDS, GROUP_EDIT_SECONDS = 5.0, 15.0
# The cloud Bot API lets bots download files of up to 20 MB (getFile fails above that); a self-hosted Bot API
# server has no such limit. https://core.telegram.org/bots/api#getfile
CLOUD_API_HOST, CLOUD_DOWNLOAD_LIMIT = "api.telegram.org", 20 * 1024 * 1024


def is_permanent(error: Exception) -> bool:
    """Telegram errors that trying again cannot fix: the person blocked the bot or left, the chat is gone,
    or the request itself is refused (400)."""
    return isinstance(error, (Forbidden, BadRequest))


class _InAlbum(filters.MessageFilter):
    """A message that is one part of an album (media group)."""

    def filter(self, message: Message) -> bool:
        return message.media_group_id is not None


def _admin_ids(settings: Settings) -> set[str]:
    return {i.strip() for i in settings.telegram_admin_ids.split(",") if i.strip()}


def _buttons(job_id: int, done: bool = False) -> InlineKeyboardMarkup:
    if done:  # under a delivered video
        return InlineKeyboardMarkup([[InlineKeyboardButton("Re-roll", callback_data=f"reroll:{job_id}"),
                                      InlineKeyboardButton("Extend", callback_data=f"extend:{job_id}")]])
    return InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data=f"cancel:{job_id}")]])


class TelegramBot:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self.admins = _admin_ids(settings)
        root = settings.telegram_api_url.rstrip("/")
        self.app: Application = (
            ApplicationBuilder().token(settings.telegram_token).base_url(f"{root}/bot")
            .base_file_url(f"{root}/file/bot").concurrent_updates(True).build()
        )
        self.watcher = Watcher(store, Frontend(PLATFORM, self.show_progress, self.deliver, self._edit_interval,
                                               notify_admins=self.notify_admins if self.admins else None,
                                               is_permanent=is_permanent))
        app = self.app
        # First: an edit, or a channel's post, is read by nothing below (a second job from a fixed typo).
        app.add_handler(MessageHandler(filters.UpdateType.EDITED | filters.UpdateType.CHANNEL_POSTS, self.on_edited),
                        group=-1)
        app.add_handler(CommandHandler(["start", "help"], self.on_help))
        app.add_handler(CommandHandler("queue", self.on_queue))
        app.add_handler(CommandHandler("cancel", self.on_cancel))
        app.add_handler(CommandHandler("limits", self.on_limits))
        app.add_handler(CommandHandler("setlimit", self.on_setlimit))
        app.add_handler(CommandHandler("animate", self.on_animate_command))
        app.add_handler(CommandHandler("info", self.on_info))
        app.add_handler(CommandHandler("admin", self.on_admin))
        self.albums = AlbumCollector(self.on_album)
        app.add_handler(MessageHandler(_InAlbum(), self.on_album_part))
        self.files = JobFiles(settings.data_dir)
        self._quiet_until: dict[str, float] = {}  # chat id -> when Telegram's flood control lets edits resume
        self.extensions = TelegramExtensions(self)
        self.extensions.add_handlers(app)
        app.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, self.on_picture))
        app.add_handler(MessageHandler(filters.Document.ALL, self.on_not_a_picture))
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE, self.on_anything_else))  # what no handler took
        app.add_handler(CallbackQueryHandler(self.on_button))
        app.add_error_handler(self.on_error)

    # ----- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        async with self.app:
            await self.app.start()
            await self.app.updater.start_polling(poll_interval=0.0, timeout=10)
            log.info("telegram: polling as @%s", self.app.bot.username)
            try:
                await self.watcher.run(stop)
            finally:
                await self.app.updater.stop()
                await self.app.stop()

    # ----- requests -------------------------------------------------------------------------------

    def _addressed(self, message: Message, text: str) -> bool:
        """In groups, only captions that start with our /animate or mention the bot are for us."""
        if message.chat.type == ChatType.PRIVATE:
            return True
        username = self.app.bot.username
        return command_text(text, "animate", username) is not None or mentions(text, username)

    def _clean_caption(self, text: str) -> str:
        username = self.app.bot.username
        after_command = command_text(text, "animate", username)
        return without_mentions(text if after_command is None else after_command, username)

    async def on_picture(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        await self._submit_captioned(message, [message], "photo")

    async def on_album_part(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        self.albums.add(message.media_group_id, message)

    async def on_album(self, messages: list[Message]) -> None:
        """A whole album: the caption (on one of its parts) says what the pictures are for."""
        captioned = [m for m in messages if m.caption]
        anchor = captioned[0] if captioned else messages[0]
        try:
            await self._submit_captioned(anchor, messages, "album")
        except Exception as error:  # an album is handled outside the application: on_error never sees it
            await self._answer_failure(anchor, error)

    async def _submit_captioned(self, anchor: Message, messages: list[Message], what: str) -> None:
        """The pictures of `messages`, if `anchor`'s caption is addressed to the bot and holds a prompt."""
        caption = anchor.caption or ""
        if not self._addressed(anchor, caption):
            return
        caption = self._clean_caption(caption)
        if not caption:
            await anchor.reply_text(f"Add a caption to the {what}: it is the prompt.\n" + EXAMPLE)
            return
        await self._submit(anchor, messages, caption)

    async def on_animate_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        target = message.reply_to_message
        if target is None or not (target.photo or (target.document and _is_image_document(target))):
            await message.reply_text("Reply to a photo with /animate and a prompt.\n" + EXAMPLE)
            return
        text = " ".join(context.args or [])
        if not text:
            await message.reply_text("Write the prompt after /animate.")
            return
        await self._submit(message, [target], text)

    async def on_not_a_picture(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if command_text(message.caption or "", "extend", self.app.bot.username) is not None:
            await message.reply_text(texts.NOT_A_VIDEO)
        elif self._addressed(message, message.caption or ""):
            await message.reply_text("That file is not a picture. Send a photo (or an image file) with a caption.")

    async def on_anything_else(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A private message no handler took (a sticker, a voice note, plain text, an unknown command): say what
        the bot reads rather than nothing."""
        message = update.effective_message
        word = (message.text or "").split(maxsplit=1)[0] if (message.text or "").startswith("/") else ""
        if word:
            await message.reply_text(f"I don't know {word[:40]}. /help lists what I do.")
        else:
            await message.reply_text(EXAMPLE + "\n/help lists the rest.")

    async def on_edited(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An edited message changes nothing: its job was queued from what it first said. Said where the message
        was for the bot; a channel's post is not (the bot serves people in chats and groups)."""
        message = update.edited_message
        if message is not None and self._addressed(message, message.caption or message.text or ""):
            await message.reply_text(texts.EDIT_NOT_READ)
        raise ApplicationHandlerStop

    async def _download(self, source: Message) -> bytes:
        limits = await self.store.get_limits()
        if source.photo:
            item = max(source.photo, key=lambda p: p.width * p.height)
            size = item.file_size
        else:
            item = source.document
            size = item.file_size
        if size and size > limits.max_image_bytes:
            raise InputError(f"The picture is {size / 1e6:.1f} MB; the limit is {limits.max_image_bytes / 1e6:g} MB.")
        download_limit = self.download_limit()
        if size and download_limit and size > download_limit:
            raise InputError(f"The file is {size / 1e6:.1f} MB, and Telegram lets bots download files of up to "
                             f"{download_limit / 2**20:g} MB. Send it as a photo, or a smaller file.")
        file = await item.get_file()
        return bytes(await file.download_as_bytearray())

    async def _submit(self, reply_to: Message, sources: list[Message], caption: str) -> None:
        """Parse, check, download and queue: the pictures are `sources`, one message each (an album's parts)."""
        user = reply_to.from_user
        try:
            request = parse_caption(caption)
            if not request.prompt:
                raise InputError("The prompt is empty.\n" + EXAMPLE)
            guides = album_guides(request, len(sources))
            job = self.new_job(reply_to, user, request, guides, await chosen_loras(request, self.settings),
                               await self.store.get_limits())
            await self.store.check_request(job)  # before a byte is downloaded
            pictures = await self._download_pictures(sources, guides)
            enqueued = await self.store.enqueue(job, pictures)
        except texts.REFUSED as error:
            await reply_to.reply_text(str(error))
            return
        await self.post_status(reply_to, enqueued)

    async def post_status(self, reply_to: Message, enqueued: Enqueued) -> None:
        """The queued job's status message, with its Cancel button. The job is queued whatever happens here: a
        reply Telegram fails is posted by the progress later, never answered with an error (a retry by the
        person would queue the job twice)."""
        job_id = enqueued.job_id
        try:
            status = await reply_to.reply_text(texts.queued(job_id, enqueued.position, enqueued.eta_seconds),
                                               reply_markup=_buttons(job_id))
        except TelegramError as error:
            log.warning("telegram: job %d is queued; its status message failed (%s) and comes with the progress",
                        job_id, error)
            await self.store.set_status_message(job_id, UNPOSTED)
            return
        await self.store.set_status_message(job_id, f"t:{status.message_id}")

    async def _download_pictures(self, sources: list[Message], guides: GuidePictures) -> JobPictures:
        for number, source in enumerate(sources, start=1):
            if not (source.photo or _is_image_document(source)):
                raise InputError(f"Item {number} of the album is not a picture. Send photos (or image files) only.")
        start = await self._download(sources[0])
        keyframes = tuple([await self._download(source) for source in sources[1:1 + len(guides.keyframes)]])
        end = await self._download(sources[-1]) if guides.end else None
        return JobPictures(start, end, keyframes)

    def download_limit(self) -> int | None:
        """TELEGRAM_DOWNLOAD_LIMIT, else the cloud Bot API's 20 MB when that is the server, else none."""
        configured = self.settings.telegram_download_limit
        if configured is not None:
            return configured or None
        return CLOUD_DOWNLOAD_LIMIT if CLOUD_API_HOST in self.settings.telegram_api_url else None

    def new_job(self, message: Message, user, request: Request, guides: GuidePictures,
                loras: tuple[JobLora, ...] = (), limits: Limits | None = None) -> NewJob:
        params = job_params(request, self.settings, self.settings.telegram_upload_limit, loras=loras, limits=limits)
        return NewJob(
            platform=PLATFORM, chat_id=str(message.chat_id), user_id=str(user.id), prompt=request.prompt,
            params=params, reply_to=str(message.message_id), user_name=user.username or user.full_name,
            guides=guides,
        )

    # ----- commands -------------------------------------------------------------------------------

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_message.reply_text(texts.help_text(await self.store.get_limits(), EXAMPLE))

    async def on_queue(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        jobs = await self.store.user_jobs(PLATFORM, str(update.effective_user.id))
        text = texts.queue_summary(jobs, await self.store.positions(), await self.store.queue_length(),
                                   await self.store.worker_status(), max_chars=MESSAGE_LIMIT)
        await update.effective_message.reply_text(text)

    async def on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user_id = str(update.effective_user.id)
        if context.args:
            job_id = parse_job_id(context.args[0])
            if job_id is None:
                await update.effective_message.reply_text("Usage: /cancel JOB_NUMBER, e.g. /cancel 12")
                return
        else:
            mine = await self.store.user_jobs(PLATFORM, user_id)
            if not mine:
                await update.effective_message.reply_text("You have no job to cancel.")
                return
            job_id = mine[-1].id
        outcome = await self.store.cancel(job_id, PLATFORM, user_id, is_admin=user_id in self.admins)
        await update.effective_message.reply_text(texts.CANCEL_OUTCOMES[outcome])

    async def on_info(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Reply /info to a video: the settings it says it was made with, and "Animate again" when the job's
        pictures are still stored."""
        message = update.effective_message
        video = _video_of(message.reply_to_message)
        if video is None:
            await message.reply_text("Reply /info to a video (or an MP4 file) to see how it was made.")
            return
        try:
            data = await self._download_video(video)
        except InputError as error:
            await message.reply_text(str(error))
            return
        info = await video_info(data, self.store, JobFiles(self.settings.data_dir), PLATFORM)
        again = None
        if info.again_job_id is not None:
            again = InlineKeyboardMarkup([[InlineKeyboardButton("Animate again",
                                                                callback_data=f"reroll:{info.again_job_id}")]])
        await message.reply_text(info.text, reply_markup=again)

    async def _download_video(self, video) -> bytes:
        """The video's bytes, refused before getFile when it is over our limit or Telegram's."""
        limits = [limit for limit in (self.settings.max_info_video_bytes, self.download_limit()) if limit]
        size = video.file_size
        if size and size > min(limits):
            raise InputError(f"The video is {size / 1e6:.1f} MB; I can read videos of up to {min(limits) / 1e6:g} MB.")
        file = await video.get_file()
        data = bytes(await file.download_as_bytearray())
        if len(data) > min(limits):
            raise InputError(f"The video is larger than {min(limits) / 1e6:g} MB.")
        return data

    async def _require_admin(self, update: Update) -> bool:
        if str(update.effective_user.id) in self.admins:
            return True
        await update.effective_message.reply_text("Only the bot's admins can do that.")
        return False

    async def on_limits(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if await self._require_admin(update):
            await update.effective_message.reply_text(texts.limits(await self.store.get_limits()))

    async def on_setlimit(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not await self._require_admin(update):
            return
        if not context.args or len(context.args) < 2:
            await update.effective_message.reply_text("Usage: /setlimit NAME VALUE, e.g. /setlimit max_seconds 30")
            return
        name, value = context.args[0], " ".join(context.args[1:])
        try:
            limits = await self.store.set_limit(name, value, f"telegram:{update.effective_user.id}")
        except InputError as error:
            await update.effective_message.reply_text(str(error))
            return
        await update.effective_message.reply_text("Limit changed.\n" + texts.limits(limits))

    async def on_admin(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """`/admin loras`: the LoRA files and whether each loads (a check of some seconds, off the loop)."""
        if not await self._require_admin(update):
            return
        if [word.lower() for word in context.args or []] == ["workers"]:
            await update.effective_message.reply_text(texts.workers_list(await self.store.workers())[:MESSAGE_LIMIT])
            return
        if [word.lower() for word in context.args or []] != ["loras"]:
            await update.effective_message.reply_text(texts.ADMIN_USAGE_TELEGRAM)
            return
        listing = await lora_listing(self.settings)
        await update.effective_message.reply_text(listing[:MESSAGE_LIMIT])

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        action, _, raw_id = (query.data or "").partition(":")
        user_id = str(query.from_user.id)
        job_id = parse_job_id(raw_id)
        if job_id is None:
            await query.answer("That button is out of date.")
            return
        if action == "cancel":
            outcome = await self.store.cancel(job_id, PLATFORM, user_id, is_admin=user_id in self.admins)
            await query.answer(texts.CANCEL_OUTCOMES[outcome], show_alert=outcome == "not_allowed")
            return
        if action == "reroll":
            refused = await self._reroll(job_id, query.message, query.from_user)
            await query.answer(refused or "Queued with a new seed.", show_alert=refused is not None)
            return
        if action == "extend":
            refused = await self.extensions.on_button(job_id, query.message, query.from_user)
            await query.answer(refused, show_alert=refused is not None)
            return
        await query.answer()

    async def _reroll(self, job_id: int, message: Message, user) -> str | None:
        """Queue the same picture and prompt with a new seed, for whoever clicked, in the chat they clicked in;
        returns why not, or None."""
        old = await self.store.get(job_id)
        if old is None or old.platform != PLATFORM:
            return "That video's picture is no longer stored."
        if old.extends is not None:
            return await self.extensions.reroll(old, message, user)
        await self.store.fetch_inputs(job_id)
        try:
            pictures = await asyncio.to_thread(JobFiles(self.settings.data_dir).read_pictures, job_id, old.guides)
        except FileNotFoundError:
            return "That video's picture is no longer stored."
        # Every setting but the seed is kept: the end picture, keyframes, cfg, negative prompt, loop.
        params = JobParams(**{**old.params.__dict__, "seed": new_seed()})
        job = NewJob(PLATFORM, str(message.chat_id), str(user.id), old.prompt, params, str(message.message_id),
                     user.username or user.full_name, guides=old.guides)
        try:
            enqueued = await self.store.enqueue(job, pictures)
        except texts.REFUSED as error:
            return str(error)
        await self.post_status(message, enqueued)
        return None

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._answer_failure(update.effective_message if isinstance(update, Update) else None, context.error)

    async def _answer_failure(self, message: Message | None, error: BaseException) -> None:
        """Anything a handler did not expect: logged, and the person gets an answer instead of silence."""
        log.error("telegram: handling an update failed: %s", error, exc_info=error)
        if message is not None:
            await _quietly(message.reply_text("Something went wrong on my side. Please try again in a moment."))

    async def notify_admins(self, text: str) -> None:
        """Every admin who can be reached; raises when none could (the watcher tries the notice again)."""
        failures = []
        for admin in sorted(self.admins):
            try:
                await self.app.bot.send_message(int(admin), text)
            except TelegramError as error:
                log.info("telegram: could not tell admin %s (%s)", admin, error)
                failures.append(error)
        if failures and len(failures) == len(self.admins):
            raise failures[-1]

    # ----- progress and delivery (called by the watcher) -------------------------------------------

    def _edit_interval(self, job: Job) -> float:
        return PRIVATE_EDIT_SECONDS if int(job.chat_id) > 0 else GROUP_EDIT_SECONDS

    async def show_progress(self, job: Job, text: str, preview: str | None) -> bool:
        """False while Telegram's flood control pauses edits in the job's chat: nothing was tried."""
        if time.monotonic() < self._quiet_until.get(job.chat_id, 0.0):
            return False
        try:
            await self._show_progress(job, text, preview)
        except ChatMigrated as moved:  # the status message stayed in the old group: a new one there
            await self._show_progress(await self._moved(job, moved), text, preview)
        return True

    async def deliver(self, job: Job) -> None:
        try:
            await self._deliver(job)
        except ChatMigrated as moved:
            await self._deliver(await self._moved(job, moved))

    async def _moved(self, job: Job, moved: ChatMigrated) -> Job:
        """A group upgraded to a supergroup has a new chat id, and its old one takes no message: every job of the
        group follows it, else no progress or video would ever reach it."""
        new_chat_id = str(moved.new_chat_id)
        await self.store.move_chat(PLATFORM, job.chat_id, new_chat_id)
        return dataclasses.replace(job, chat_id=new_chat_id, status_message=UNPOSTED if job.status_message else None)

    async def _show_progress(self, job: Job, text: str, preview: str | None) -> None:
        if job.status_message == UNPOSTED:
            sent = await self.app.bot.send_message(
                job.chat_id, text, reply_markup=_buttons(job.id), allow_sending_without_reply=True,
                reply_to_message_id=int(job.reply_to) if job.reply_to else None)
            await self.store.set_status_message(job.id, f"t:{sent.message_id}")
            return
        kind, _, raw = job.status_message.partition(":")
        message_id = int(raw)
        bot = self.app.bot
        try:
            if preview and kind == "t":
                # A text message cannot become an animation: send the preview, then drop the text. The photo it
                # answers may have been deleted since: then it comes without the reply.
                with open(preview, "rb") as gif:
                    sent = await bot.send_animation(
                        job.chat_id, gif, caption=text, reply_markup=_buttons(job.id), allow_sending_without_reply=True,
                        reply_to_message_id=int(job.reply_to) if job.reply_to else None)
                await self.store.set_status_message(job.id, f"a:{sent.message_id}")
                await _quietly(bot.delete_message(job.chat_id, message_id))
            elif preview:
                with open(preview, "rb") as gif:
                    await bot.edit_message_media(InputMediaAnimation(gif, caption=text), chat_id=job.chat_id,
                                                 message_id=message_id, reply_markup=_buttons(job.id))
            elif kind == "a":  # no new preview yet (a resumed render's first report): the animation's caption
                await bot.edit_message_caption(chat_id=job.chat_id, message_id=message_id, caption=text,
                                               reply_markup=_buttons(job.id))
            else:
                await bot.edit_message_text(text, chat_id=job.chat_id, message_id=message_id,
                                            reply_markup=_buttons(job.id))
        except RetryAfter as wait:
            self._quiet_until[job.chat_id] = time.monotonic() + _seconds(wait.retry_after)
            log.info("telegram: flood control, progress edits in chat %s paused for %s s", job.chat_id,
                     wait.retry_after)
        except BadRequest as error:
            if "not modified" in str(error).lower():
                return
            if "not found" in str(error).lower():  # the person deleted it: post a new one
                sent = await bot.send_message(job.chat_id, text, reply_markup=_buttons(job.id))
                await self.store.set_status_message(job.id, f"t:{sent.message_id}")
                return
            raise

    async def _deliver(self, job: Job) -> None:
        bot = self.app.bot
        reply_to = int(job.reply_to) if job.reply_to else None
        limit = self.settings.telegram_upload_limit
        video_path = job.video_for_limit(limit)
        if job.state is JobState.DONE and not (video_path and os.path.isfile(video_path)):
            await bot.send_message(job.chat_id, texts.VIDEO_LOST.format(job=job.id), reply_to_message_id=reply_to,
                                   allow_sending_without_reply=True)
            raise Undeliverable("the video file is missing")
        # The limit may have been lowered since the job made its copies; the server may take less than it says.
        too_big = job.state is JobState.DONE and os.path.getsize(video_path) > limit
        while True:
            try:
                if too_big:
                    size = os.path.getsize(video_path) / 1e6
                    why = texts.OVER_UPLOAD_LIMIT.format(mb=limit / 1e6) if size * 1e6 > limit else \
                        texts.REFUSED_AS_TOO_LARGE.format(mb=size)
                    await bot.send_message(job.chat_id, texts.finished(job) + why, reply_to_message_id=reply_to,
                                           allow_sending_without_reply=True)
                elif job.state is JobState.DONE:
                    with open(video_path, "rb") as video:
                        await bot.send_video(
                            job.chat_id, video, caption=texts.finished(job)[:1024], supports_streaming=True,
                            reply_to_message_id=reply_to, reply_markup=_buttons(job.id, done=True),
                            allow_sending_without_reply=True, read_timeout=300, write_timeout=300,
                        )
                else:
                    await bot.send_message(job.chat_id, texts.finished(job), reply_to_message_id=reply_to,
                                           allow_sending_without_reply=True)
                break
            except RetryAfter as wait:  # never drop a finished video: wait as long as Telegram asks
                log.info("telegram: flood control, delivering job %d in %s s", job.id, wait.retry_after)
                await asyncio.sleep(_seconds(wait.retry_after))
            except NetworkError as error:  # a 413: no retry would get the file through, a text still can
                if too_big or "too large" not in str(error).lower():
                    raise
                log.warning("telegram: job %d: the server refused the video as too large (%s)", job.id, error)
                too_big = True
        if job.status_message and job.status_message != UNPOSTED:
            kind, _, raw = job.status_message.partition(":")
            await _quietly(bot.delete_message(job.chat_id, int(raw)))


def _seconds(value) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


def _video_of(message: Message | None):
    """The video, animation or MP4 document of `message`, or None."""
    if message is None:
        return None
    if message.video or message.animation:
        return message.video or message.animation
    document = message.document
    return document if document and is_video_name(document.file_name, document.mime_type) else None


def _is_image_document(message: Message) -> bool:
    return bool(message.document and (message.document.mime_type or "").startswith("image/"))


async def _quietly(coroutine) -> None:
    try:
        await coroutine
    except TelegramError as error:
        log.info("telegram: ignored %s", error)


async def run(settings: Settings, store: JobStore, stop: asyncio.Event) -> None:
    await TelegramBot(settings, store).run(stop)
