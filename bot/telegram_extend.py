"""Telegram: extending a video. The Extend button under a delivered video asks (a reply with the seconds and a
prompt answers); `/extend 5 what happens next` in reply to a delivered video, to that question, or to any MP4 or
WebM; or a video sent with the caption `/extend ...`. The job then goes through the frontend's own progress and
delivery like any other."""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

from telegram import ForceReply, Message, Update
from telegram.constants import ChatType
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot import texts
from bot.extending import extension_job, is_video, job_of_video, parse_extension, plain_prompt, rerolled_extension
from bot.options import Request
from bot.telegram_addressing import command_text
from storage.files import JobFiles
from storage.inputs import InputError
from storage.jobs import Enqueued, Extends, GuidePictures, Job, NewJob, parse_job_id
from storage.settings import Settings
from storage.store import JobStore

PLATFORM = "telegram"
_ASKED = re.compile(r"^Extending job (\d+):")


class ExtensionHost(Protocol):
    """What the extensions take from their frontend (bot/telegram_frontend.py's TelegramBot)."""

    settings: Settings
    store: JobStore
    files: JobFiles
    app: Application

    def new_job(self, message: Message, user, request: Request, guides: GuidePictures) -> NewJob: ...
    def download_limit(self) -> int | None: ...
    async def post_status(self, reply_to: Message, enqueued: Enqueued) -> None: ...


class TelegramExtensions:
    def __init__(self, bot: ExtensionHost):
        self.bot = bot

    def add_handlers(self, app: Application) -> None:
        """Before the picture handlers: a video document is not "not a picture" here."""
        app.add_handler(CommandHandler("extend", self.on_command))
        app.add_handler(MessageHandler(filters.VIDEO | filters.Document.VIDEO, self.on_video))
        app.add_handler(MessageHandler(filters.REPLY & filters.TEXT & ~filters.COMMAND, self.on_reply))

    # ----- the ways in ----------------------------------------------------------------------------

    async def on_button(self, job_id: int, message: Message, user) -> str | None:
        """Extend clicked under a delivered video: refuse at once what cannot be extended, else ask for the
        seconds and a prompt as a reply; returns why not, or None."""
        try:
            job = await self._job_extension(message, user, job_id, Request(""))
            await self.bot.store.check_request(job)
        except texts.REFUSED as error:
            return str(error)
        await message.reply_text(texts.EXTEND_ASK.format(job=job_id),
                                 reply_markup=ForceReply(selective=True, input_field_placeholder="5 what happens next"))
        return None

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/extend in reply to a delivered video, to the bot's question, or to a video a person sent."""
        message = update.effective_message
        target = message.reply_to_message
        text = " ".join(context.args or [])
        job_id = _job_of(target, self.bot.app.bot.id) if target is not None else None
        if job_id is not None:
            await self._extend_job(message, job_id, text)
        elif _video_of(target) is not None:
            await self._extend_video(message, _video_of(target), text)
        elif target is not None and (target.document or target.photo):
            await message.reply_text(texts.NOT_A_VIDEO)
        else:
            await message.reply_text(texts.EXTEND_USAGE_TELEGRAM)

    async def on_video(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A video with the caption `/extend ...`; in a private chat, one without it is told how."""
        message = update.effective_message
        text = command_text(message.caption or "", "extend", self.bot.app.bot.username)
        if text is not None:
            await self._extend_video(message, _video_of(message), text)
        elif message.chat.type == ChatType.PRIVATE:
            await message.reply_text(texts.EXTEND_USAGE_TELEGRAM)

    async def on_reply(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A reply to the bot's "Extending job N:" question: the seconds and the prompt."""
        message = update.effective_message
        asked = message.reply_to_message
        if asked.from_user is None or asked.from_user.id != self.bot.app.bot.id:
            return
        match = _ASKED.match(asked.text or "")
        if match:
            await self._extend_job(message, int(match[1]), message.text)

    async def reroll(self, old: Job, message: Message, user) -> str | None:
        """Re-roll of an extension: the same source and prompt, a new seed; returns why not, or None."""
        video = None
        if old.extends.from_video:
            await self.bot.store.fetch_inputs(old.id)
            path = self.bot.files.source_video_path(old.id)
            if not path.is_file():
                return "That video is no longer stored; send it again with /extend."
            video = path.read_bytes()
        return await self._queue(message, rerolled_extension(self._base(message, user), old), video, answer=False)

    # ----- the two sources ------------------------------------------------------------------------

    async def _extend_job(self, message: Message, job_id: int, text: str) -> None:
        try:
            job = await self._job_extension(message, message.from_user, job_id, parse_extension(text))
        except texts.REFUSED as error:
            await message.reply_text(str(error))
            return
        await self._queue(message, job)

    async def _extend_video(self, message: Message, video, text: str) -> None:
        """Refused from what Telegram declares before getFile; the bytes are checked at enqueue. A video this
        bot made (forwarded, or its Extend button lost) continues from its job's kept latents when the person
        may extend that job, else from its frames like any video."""
        try:
            if video is None:
                raise InputError(texts.NOT_A_VIDEO)
            request = parse_extension(text)
            job = None
            if request.prompt:  # a video sent without a prompt may still be one of ours: look inside first
                job = self._video_extension(message, request, video)
                await self.bot.store.check_request(job)  # before a byte is downloaded
            data = await self._download(video)
            source = await job_of_video(data, self.bot.store, PLATFORM)
            if source is not None and await self._queue(message, await self._job_extension(
                    message, message.from_user, source.id, request), answer=False) is None:
                return
            if source is not None and not request.prompt:  # its own prompt, as a job extension would take
                request = dataclasses.replace(request, prompt=plain_prompt(source))
            job = job or self._video_extension(message, request, video)
        except texts.REFUSED as error:
            await message.reply_text(str(error))
            return
        await self._queue(message, job, data)

    def _video_extension(self, message: Message, request: Request, video) -> NewJob:
        return extension_job(self._base(message, message.from_user), request, self.bot.settings,
                             Extends(video_name=(getattr(video, "file_name", None) or "video.mp4")[:200]))

    async def _job_extension(self, message: Message, user, job_id: int, request: Request) -> NewJob:
        source = await self.bot.store.get(job_id)
        if source is None or source.platform != PLATFORM:
            raise InputError(f"There is no job {job_id} here.")
        return extension_job(self._base(message, user), request, self.bot.settings, Extends(job_id), source)

    def _base(self, message: Message, user) -> NewJob:
        return self.bot.new_job(message, user, Request(""), GuidePictures())

    async def _download(self, video) -> bytes:
        limits = [limit for limit in (self.bot.settings.max_extend_video_bytes, self.bot.download_limit()) if limit]
        size = video.file_size
        if size and size > min(limits):
            raise InputError(texts.video_too_big(size, min(limits)))
        data = bytes(await (await video.get_file()).download_as_bytearray())
        if len(data) > min(limits):
            raise InputError(texts.video_too_big(len(data), min(limits)))
        return data

    async def _queue(self, message: Message, job: NewJob, video: bytes | None = None,
                     answer: bool = True) -> str | None:
        """Queue the extension and post its status with a Cancel button; a refusal is replied (`answer`) or
        returned."""
        try:
            enqueued = await self.bot.store.enqueue_extension(job, video)
        except texts.REFUSED as error:
            if answer:
                await message.reply_text(str(error))
            return str(error)
        await self.bot.post_status(message, enqueued)
        return None


def _job_of(message: Message, bot_id: int) -> int | None:
    """The job a message of the bot stands for: a delivered video (its Extend button) or its question."""
    if message.from_user is None or message.from_user.id != bot_id:
        return None
    match = _ASKED.match(message.text or "")
    if match:
        return int(match[1])
    markup = message.reply_markup
    for row in (markup.inline_keyboard if markup else ()):
        for button in row:
            action, _, raw = (button.callback_data or "").partition(":")
            if action == "extend":
                return parse_job_id(raw)
    return None


def _video_of(message: Message | None):
    """The video of `message`, or its MP4/WebM document; None otherwise."""
    if message is None:
        return None
    if message.video:
        return message.video
    document = message.document
    return document if document and is_video(document.file_name, document.mime_type) else None
