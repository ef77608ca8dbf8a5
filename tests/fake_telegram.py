"""A fake Telegram Bot API on 127.0.0.1: enough of the real HTTP protocol for python-telegram-bot.

Tests push updates (a user sends a photo, clicks a button) and read back every call the bot made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time

from aiohttp import web

DOWNLOAD_LIMIT = 20 * 1024 * 1024
TEXT_LIMIT, CAPTION_LIMIT = 4096, 1024  # characters, as the Bot API refuses longer ones


class BadRequestError(Exception):
    """A method refused with 400 and this description, as the Bot API does."""


BOT_USER = {"id": 4242, "is_bot": True, "first_name": "FramePack", "username": "framepack_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


class FakeTelegram:
    def __init__(self, token: str):
        self.token = token
        self.updates: list[dict] = []
        self.new_update = asyncio.Event()
        self.calls: list[tuple[str, dict, dict[str, bytes]]] = []
        self.files: dict[str, bytes] = {}
        self.ids = itertools.count(1000)
        self.update_ids = itertools.count(1)
        self.fail_next: dict[str, int] = {}  # method -> seconds of a 429 retry_after to answer once
        self.blocked: set[int] = set()  # chats whose user blocked the bot: sending there answers 403
        self.server_errors: dict[str, int] = {}  # method -> how many 500s to answer before working again
        self.migrated: dict[int, int] = {}  # group id -> its supergroup's: the old id takes no message any more
        self.deleted: set[int] = set()  # messages a person deleted: a reply to one is refused unless allowed without
        self.animations: set[int] = set()  # messages the bot sent as animations: they have a caption, not a text
        self.upload_limit: int | None = None  # bytes of a sendVideo the server takes; over it: 413
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=200 * 2**20)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    # ----- what a test does -----------------------------------------------------------------------

    def _chat(self, chat_id: int) -> dict:
        return {"id": chat_id, "type": "private" if chat_id > 0 else "group", "title": "group"}

    def _user(self, user_id: int) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}", "username": f"user{user_id}"}

    def _push(self, update: dict) -> dict:
        update["update_id"] = next(self.update_ids)
        self.updates.append(update)
        self.new_update.set()
        return update

    def add_file(self, data: bytes) -> str:
        file_id = f"file{next(self.ids)}"
        self.files[file_id] = data
        return file_id

    def message(self, chat_id: int, user_id: int, **fields) -> dict:
        return {"message_id": next(self.ids), "date": int(time.time()), "chat": self._chat(chat_id),
                "from": self._user(user_id), **fields}

    def send_photo(self, chat_id: int, user_id: int, data: bytes, caption: str | None = None,
                   media_group_id: str | None = None) -> dict:
        file_id = self.add_file(data)
        sizes = [{"file_id": f"{file_id}_small", "file_unique_id": "s", "width": 90, "height": 90},
                 {"file_id": file_id, "file_unique_id": "u" + file_id, "width": 800, "height": 600,
                  "file_size": len(data)}]
        self.files[f"{file_id}_small"] = b"small"
        extra = {"caption": caption} if caption is not None else {}
        if media_group_id is not None:  # one part of an album
            extra["media_group_id"] = media_group_id
        message = self.message(chat_id, user_id, photo=sizes, **extra)
        self._push({"message": message})
        return message

    def send_document(self, chat_id: int, user_id: int, data: bytes, mime: str, caption: str | None,
                      media_group_id: str | None = None) -> dict:
        file_id = self.add_file(data)
        document = {"file_id": file_id, "file_unique_id": "d" + file_id, "file_name": "x", "mime_type": mime,
                    "file_size": len(data)}
        extra = {"media_group_id": media_group_id} if media_group_id is not None else {}
        message = self.message(chat_id, user_id, document=document, **({"caption": caption} if caption else {}),
                               **extra)
        self._push({"message": message})
        return message

    def send_text(self, chat_id: int, user_id: int, text: str, reply_to: dict | None = None) -> dict:
        fields = {"text": text}
        if text.startswith("/"):
            command = text.split()[0]
            fields["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if reply_to is not None:
            fields["reply_to_message"] = reply_to
        message = self.message(chat_id, user_id, **fields)
        self._push({"message": message})
        return message

    def send(self, chat_id: int, user_id: int, **fields) -> dict:
        """Any other message: a sticker, a voice note, plain text without a command's entity."""
        message = self.message(chat_id, user_id, **fields)
        self._push({"message": message})
        return message

    def edit(self, message: dict, **changes) -> dict:
        """The person edits a message they sent (its caption or text): Telegram sends it again as an edit."""
        edited = {**message, **changes, "edit_date": int(time.time())}
        self._push({"edited_message": edited})
        return edited

    def post_in_channel(self, chat_id: int, **fields) -> dict:
        """A channel's post, where the bot is an admin: no sender."""
        post = {"message_id": next(self.ids), "date": int(time.time()),
                "chat": {"id": chat_id, "type": "channel", "title": "channel"}, **fields}
        self._push({"channel_post": post})
        return post

    def click(self, chat_id: int, user_id: int, message_id: int, data: str) -> None:
        message = {"message_id": message_id, "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": BOT_USER, "text": "status"}
        self._push({"callback_query": {"id": str(next(self.ids)), "from": self._user(user_id),
                                       "chat_instance": "ci", "data": data, "message": message}})

    def calls_to(self, method: str) -> list[dict]:
        return [params for name, params, _ in self.calls if name == method]

    async def wait_for(self, method: str, predicate=lambda p: True, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, params, files in self.calls:
                if name == method and predicate(params):
                    return {**params, "_files": files}
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {method} call matched; calls: {[c[0] for c in self.calls]}")

    # ----- the protocol ---------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> tuple[dict, dict[str, bytes]]:
        params, files = dict(request.query), {}
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if hasattr(value, "file"):
                    files[key] = value.file.read()
                else:
                    params[key] = value
        for key in ("reply_markup", "media", "reply_parameters"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        return params, files

    def _ok(self, result) -> web.Response:
        return web.Response(text=json.dumps({"ok": True, "result": result}), content_type="application/json")

    def _sent(self, params: dict, **fields) -> dict:
        chat_id = int(params["chat_id"])
        return {"message_id": next(self.ids), "date": int(time.time()), "chat": self._chat(chat_id),
                "from": BOT_USER, **fields}

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params, files = await self._params(request)
        if method != "getUpdates":
            self.calls.append((method, params, files))
        if self.fail_next.get(method):
            retry = self.fail_next.pop(method)
            return web.json_response({"ok": False, "error_code": 429, "description": "Too Many Requests",
                                      "parameters": {"retry_after": retry}}, status=429)
        if self.server_errors.get(method):
            self.server_errors[method] -= 1
            return web.json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"},
                                     status=500)
        chat = int(params.get("chat_id") or 0)
        if method.startswith(("send", "edit", "delete")) and chat in self.migrated:
            return web.json_response({"ok": False, "error_code": 400,
                                      "description": "Bad Request: group chat was upgraded to a supergroup chat",
                                      "parameters": {"migrate_to_chat_id": self.migrated[chat]}}, status=400)
        if method.startswith(("send", "edit")) and int(params.get("chat_id") or 0) in self.blocked:
            return web.json_response({"ok": False, "error_code": 403,
                                      "description": "Forbidden: bot was blocked by the user"}, status=403)
        replied = params.get("reply_parameters") or {}
        if int(replied.get("message_id") or 0) in self.deleted and not replied.get("allow_sending_without_reply"):
            return web.json_response({"ok": False, "error_code": 400,
                                      "description": "Bad Request: message to be replied not found"}, status=400)
        if method == "sendVideo" and self.upload_limit is not None and len(files.get("video", b"")) > self.upload_limit:
            return web.json_response({"ok": False, "error_code": 413, "description": "Request Entity Too Large"},
                                     status=413)
        handler = getattr(self, f"m_{method}", None)
        if handler is None:
            return self._ok(True)
        try:
            return self._ok(await handler(params))
        except BadRequestError as error:
            return web.json_response({"ok": False, "error_code": 400, "description": str(error)}, status=400)

    async def m_getMe(self, params):
        return BOT_USER

    async def m_getUpdates(self, params):
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 1.0)
        pending = [u for u in self.updates if u["update_id"] >= offset]
        if not pending and timeout:
            self.new_update.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.new_update.wait(), timeout)
            pending = [u for u in self.updates if u["update_id"] >= offset]
        return pending

    async def m_getFile(self, params):
        file_id = params["file_id"]
        if len(self.files[file_id]) > DOWNLOAD_LIMIT:  # the cloud Bot API's limit for bots
            raise BadRequestError("Bad Request: file is too big")
        return {"file_id": file_id, "file_unique_id": "u" + file_id, "file_size": len(self.files[file_id]),
                "file_path": f"photos/{file_id}.jpg"}

    async def _file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["path"].split("/")[-1].removesuffix(".jpg")
        return web.Response(body=self.files[file_id])

    async def m_sendMessage(self, params):
        return self._sent(params, text=_text(params, "text", TEXT_LIMIT))

    async def m_editMessageText(self, params):
        if int(params["message_id"]) in self.animations:
            raise BadRequestError("Bad Request: there is no text in the message to edit")
        return self._sent(params, text=_text(params, "text", TEXT_LIMIT), message_id=int(params["message_id"]))

    async def m_editMessageCaption(self, params):
        return self._sent(params, caption=_text(params, "caption", CAPTION_LIMIT), message_id=int(params["message_id"]))

    async def m_sendAnimation(self, params):
        animation = {"file_id": "anim", "file_unique_id": "anim", "width": 64, "height": 64, "duration": 1}
        sent = self._sent(params, animation=animation, caption=_text(params, "caption", CAPTION_LIMIT))
        self.animations.add(sent["message_id"])
        return sent

    async def m_editMessageMedia(self, params):
        animation = {"file_id": "anim", "file_unique_id": "anim", "width": 64, "height": 64, "duration": 1}
        return self._sent(params, animation=animation)

    async def m_sendVideo(self, params):
        video = {"file_id": "vid", "file_unique_id": "vid", "width": 64, "height": 64, "duration": 1}
        return self._sent(params, video=video, caption=_text(params, "caption", CAPTION_LIMIT))


def _text(params: dict, field: str, limit: int) -> str:
    text = params.get(field, "")
    if len(text) > limit:
        raise BadRequestError("Bad Request: message is too long" if field == "text" else
                              "Bad Request: message caption is too long")
    return text
