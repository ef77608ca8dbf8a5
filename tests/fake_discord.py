"""A fake Discord on 127.0.0.1: REST and the gateway websocket, enough of the real protocol for discord.py 2.x.

One guild with one text channel, the bot in it, and people a test adds. Tests play the people (slash commands with
attachments, context menus, button clicks, modal submits) and read back every message the bot made and every
interaction callback it sent. Behaviour that real Discord has and bots trip over is kept: the 3-second
acknowledgement window, "Unknown Message" after a delete, 429s with retry_after, per-guild upload limits, the first
follow-up after a "thinking" defer filling the deferred message, ephemeral messages invisible to channel routes,
interaction tokens that expire, message content withheld from MESSAGE_CREATE without the privileged intent.

Pointing discord.py at it:

    discord.http.Route.BASE = fake.base_url  # before login; also covers interaction callbacks and webhooks

    async def setup_hook(self):  # called by login(), before the gateway connection
        _, url, _ = await self.http.get_bot_gateway()
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

The gateway sends plain-text JSON frames; discord.py asks for zlib-stream but only decompresses binary frames.
`discord.Client(guild_ready_timeout=0.05)` makes on_ready come quickly; interactions work before it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import mimetypes
import re
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web
from PIL import Image

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # what DMs and unboosted guilds allow

# Message flags (https://discord.com/developers/docs/resources/message#message-object-message-flags)
SUPPRESS_EMBEDS, EPHEMERAL, LOADING, SUPPRESS_NOTIFICATIONS, IS_COMPONENTS_V2 = 1 << 2, 1 << 6, 1 << 7, 1 << 12, 1 << 15
EDIT_FLAGS = SUPPRESS_EMBEDS | IS_COMPONENTS_V2  # what an edit may add
SEND_FLAGS = EDIT_FLAGS | SUPPRESS_NOTIFICATIONS  # what a channel message may carry; interaction replies add EPHEMERAL
# Permission bits (https://discord.com/developers/docs/topics/permissions)
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ALL_PERMISSIONS = (1 << 51) - 1
# view channel, send, embed links, attach files, read history, use application commands: a fresh server's @everyone
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
# Gateway intents: Discord sends an event only to sessions that asked for its intent
GUILDS_INTENT, GUILD_MEMBERS_INTENT, GUILD_MESSAGES_INTENT = 1 << 0, 1 << 1, 1 << 9
DIRECT_MESSAGES_INTENT, MESSAGE_CONTENT_INTENT = 1 << 12, 1 << 15

# Interaction, command and component types
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3
SUB_COMMAND, SUB_COMMAND_GROUP, ATTACHMENT_OPTION = 1, 2, 11
TEXT_INPUT, LABEL = 4, 18


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class FakeMessage:
    """A message as the fake stores it; `attachments` keep the uploaded bytes under "data"."""

    id: int
    channel_id: int
    author_id: int
    content: str = ""
    embeds: list = field(default_factory=list)
    components: list = field(default_factory=list)
    attachments: list[dict] = field(default_factory=list)
    flags: int = 0
    message_reference: dict | None = None
    edits: int = 0  # PATCHes of this message
    history: list[dict] = field(default_factory=list)  # earlier versions, oldest first
    deleted: bool = False
    guild_id: int | None = None
    type: int = 0
    webhook_id: int | None = None  # the application id for interaction responses and follow-ups
    interaction_id: int | None = None
    timestamp: str = field(default_factory=now_iso)
    edited_timestamp: str | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def snapshot(self) -> dict:
        return {"content": self.content, "embeds": self.embeds, "components": self.components,
                "attachments": list(self.attachments), "flags": self.flags}

    def ever_said(self, text: str) -> bool:
        """Whether this or an earlier version of the message held `text`: a test polling the content can miss a
        version that the next edit replaced within one poll."""
        return any(text in version["content"] for version in (*self.history, self.snapshot()))

    def custom_ids(self) -> dict[str, int]:
        """custom_id -> component type for every interactive component, however deeply nested."""
        found: dict[str, int] = {}

        def walk(items: list) -> None:
            for item in items:
                if "custom_id" in item:
                    found[item["custom_id"]] = item["type"]
                walk(item.get("components", []))
                walk([item[key] for key in ("component", "accessory") if isinstance(item.get(key), dict)])

        walk(self.components)
        return found


@dataclass
class FakeInteraction:
    id: int
    token: str
    user_id: int
    type: int = APPLICATION_COMMAND
    payload: dict = field(default_factory=dict, repr=False)  # the INTERACTION_CREATE data sent to the bot
    response: dict | None = None  # the callback body: {"type": ..., "data": ...}
    channel_id: int = 0
    guild_id: int | None = None
    message_id: int | None = None  # the message a component (or a modal opened from one) sits on
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    attachment_size_limit: int = DEFAULT_UPLOAD_LIMIT
    created: float = field(default_factory=time.monotonic)
    expired: bool = False  # the token's 15 minutes are over: webhook calls get 401 Invalid Webhook Token
    fake: FakeDiscord | None = field(default=None, repr=False)

    def followups(self) -> list[FakeMessage]:
        """Messages made through POST /webhooks/{app}/{token}; the first one after a "thinking" defer is the
        original response itself (Discord fills the deferred message with it)."""
        assert self.fake is not None
        return [self.fake.messages[i] for i in self.followup_ids]

    def original(self) -> FakeMessage | None:
        assert self.fake is not None
        return self.fake.messages.get(self.original_id) if self.original_id else None

    async def wait_response(self, timeout: float = 5) -> dict:
        assert self.fake is not None
        return await self.fake.wait_for(lambda: self.response, timeout)


class DiscordError(Exception):
    """An error answer in Discord's shape: {"message", "code"} and maybe "errors"."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return json_response(body, self.status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only parses bodies whose Content-Type is exactly application/json (no charset)
    return web.Response(status=status, body=json.dumps(data).encode(),
                        headers={"Content-Type": "application/json", **(headers or {})})


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def form_error(field_name: str, code: str, message: str) -> DiscordError:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


@dataclass
class _Session:
    """What IDENTIFY starts and RESUME continues: the sequence numbers and the events a dropped client missed."""

    id: str
    intents: int
    sequence: int = 0
    missed: list[dict] = field(default_factory=list)


class _Gateway:
    """One websocket connection; every frame goes through one queue so that only one task writes."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.outbox: asyncio.Queue[str | Callable[[], None] | None] = asyncio.Queue()

    def send(self, frame: dict) -> None:
        self.outbox.put_nowait(json.dumps(frame))

    def after_sent(self, callback: Callable[[], None]) -> None:
        self.outbox.put_nowait(callback)

    async def pump(self) -> None:
        while (item := await self.outbox.get()) is not None:
            if callable(item):
                item()
                continue
            try:
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return  # the client went away; the socket handler cleans up


class FakeDiscord:
    def __init__(self, *, guild_upload_limit: int = DEFAULT_UPLOAD_LIMIT, guild_id: int = 1200000000000000001,
                 channel_id: int = 1200000000000000002, application_id: int = 1200000000000000100,
                 owner_id: int = 1200000000000000200):
        self.guild_upload_limit = guild_upload_limit
        self.guild_id, self.channel_id = guild_id, channel_id
        self.application_id = self.bot_user_id = application_id  # equal for every app made since 2019
        self.owner_id = owner_id
        self.ack_deadline = 3.0  # seconds Discord waits for an interaction callback
        self.token_lifetime = 15 * 60.0  # seconds an interaction token works for follow-ups and edits
        self.forbidden_channels: set[int] = set()  # channels where the bot may not send (403 Missing Permissions)
        self.commands: dict[int | None, list[dict]] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.responses: list[dict] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path with query) of every REST call, 429s included
        self.identify: dict | None = None  # the last IDENTIFY payload
        self.errors: list[str] = []  # requests the fake itself failed on (stop() raises if any)
        self.users: dict[int, dict] = {}
        self.member_permissions: dict[int, int] = {}  # guild member -> permissions beyond @everyone
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.files: dict[int, tuple[str, bytes, str]] = {}  # attachment id -> (filename, data, content type)
        self._roles: dict[int, dict] = {}  # permission bits -> the role that grants them
        self._rate_limits: list[list] = []  # [route substring, times left, retry_after]
        self._failures: list[list] = []  # [route substring, times left, DiscordError]
        self._ids = itertools.count()
        self._gateway: _Gateway | None = None  # the connection the session's events go to
        self._session: _Session | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = self.base_url = self.gateway_url = ""
        self.users[self.bot_user_id] = self._make_user(self.bot_user_id, "framepack", bot=True)
        self.users[owner_id] = self._make_user(owner_id, "owner")
        self.member_permissions[owner_id] = ALL_PERMISSIONS
        self._bot_role = self._role(EVERYONE_PERMISSIONS, name="FramePack", bot=True)

    # ----- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 2**20, middlewares=[self._middleware])
        app.router.add_get("/gateway", self._gateway_socket)
        app.router.add_get("/attachments/{channel}/{id}/{filename}", self._file)
        app.router.add_get("/media/attachments/{channel}/{id}/{filename}", self._file)
        self._add_rest_routes(app.router)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + API_PREFIX
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def stop(self) -> None:
        """Stops serving; raises if some request made the fake fail, so that its bugs cannot pass unseen."""
        for ws in list(self._sockets):
            await ws.close()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        if self.errors:
            raise AssertionError("fake_discord failed on requests:\n" + "\n".join(self.errors))

    async def drop_connection(self, *, resume: bool = True, code: int = 4000) -> None:
        """Closes the gateway websocket as a Discord restart does. The client reconnects and resumes, getting the
        events it missed; with resume=False the session is gone, so it identifies again (discord.py waits 5 s
        before a second IDENTIFY). wait_ready() waits for either."""
        gateway = self._gateway
        self._ready.clear()
        if not resume:
            self._session = None
        if gateway is not None:
            self._gateway = None
            await gateway.ws.close(code=code)

    async def wait_ready(self, timeout: float = 10) -> None:
        """Until the client has identified and READY and GUILD_CREATE (or, after a resume, RESUMED) have been
        written to it."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        """Polls until predicate() is truthy and returns its value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.01)
        return value

    # ----- what a test does ------------------------------------------------------------------------

    def add_member(self, user_id: int, *, name: str = "", permissions: int = 0) -> dict:
        """A person in the guild; `permissions` come from a role, so member.guild_permissions and
        interaction.permissions agree."""
        self.users[user_id] = self._make_user(user_id, name or f"user{user_id}")
        self.member_permissions[user_id] = permissions
        if permissions:
            self._role(permissions)
        member = self._member(user_id)
        self._dispatch("GUILD_MEMBER_ADD", {**member, "guild_id": str(self.guild_id)}, GUILD_MEMBERS_INTENT)
        return member

    def upload(self, filename: str, data: bytes, content_type: str | None = None, *, channel_id: int | None = None
               ) -> dict:
        """Stores a file the fake serves over HTTP; returns its attachment object (bytes under "data")."""
        return self._store_file(channel_id or self.channel_id, filename, data, content_type)

    def post_user_message(self, user_id: int, content: str = "", attachments: list[dict] | None = None,
                          *, channel_id: int | None = None) -> FakeMessage:
        """A message by a person; the bot sees it through MESSAGE_CREATE, without content unless it has the
        message content intent, and fully in a context-menu interaction."""
        self._ensure_user(user_id)
        channel_id = channel_id or self.channel_id
        message = self._message(channel_id, user_id, content=content, attachments=list(attachments or []))
        self.messages[message.id] = message
        payload = self._message_payload(message)
        if self._session and not self._session.intents & MESSAGE_CONTENT_INTENT and not self._is_dm(channel_id):
            payload.update(content="", attachments=[], embeds=[], components=[])
        self._dispatch("MESSAGE_CREATE", payload, self._message_intent(channel_id))
        return message

    def delete_message(self, message_id: int) -> None:
        """As if a person deleted it: later edits, replies and fetches get 404 Unknown Message."""
        message = self.messages[message_id]
        message.deleted = True
        if not message.ephemeral:
            self._dispatch("MESSAGE_DELETE", self._strip_none({"id": str(message.id), "channel_id": str(
                message.channel_id), "guild_id": str(message.guild_id) if message.guild_id else None}),
                self._message_intent(message.channel_id))

    def rate_limit_next(self, route_substring: str, times: int = 1, retry_after: float = 0.05) -> None:
        """The next `times` REST calls whose "METHOD /path" contains route_substring get a 429."""
        self._rate_limits.append([route_substring, times, retry_after])

    def fail_next(self, route_substring: str, error: DiscordError, times: int = 1) -> None:
        """The next `times` REST calls whose "METHOD /path" contains route_substring get `error`."""
        self._failures.append([route_substring, times, error])

    def expire_token(self, interaction: FakeInteraction) -> None:
        """As if 15 minutes had passed: the interaction's webhook calls get 401 Invalid Webhook Token."""
        interaction.expired = True

    def forbid_channel(self, channel_id: int) -> None:
        """The bot loses Send Messages there (or, for a DM channel, the person closes DMs)."""
        self.forbidden_channels.add(channel_id)

    def requests_to(self, substring: str) -> list[tuple[str, str]]:
        return [r for r in self.requests if substring in f"{r[0]} {r[1]}"]

    def dm_channel_id(self, user_id: int) -> int:
        if user_id not in self.dm_channels:
            self.dm_channels[user_id] = self._snowflake()
        return self.dm_channels[user_id]

    async def slash_command(self, name: str, user_id: int, options: dict[str, Any] | None = None, *,
                            attachments: dict[str, dict] | None = None, guild: bool = True,
                            subcommand: str | None = None) -> FakeInteraction:
        """A person runs /name (`subcommand` "sub" or "group sub"); `attachments` maps option names to what
        upload() returned. The command must have been registered (synced) for this guild or globally."""
        command = self._find_command(name, CHAT_INPUT, guild)
        schema = command.get("options", [])
        top: list[dict] = []
        level = top
        for part in (subcommand or "").split():
            option = self._schema_option(schema, part, name)
            node = {"name": part, "type": option["type"], "options": []}
            level.append(node)
            level, schema = node["options"], option.get("options", [])
        for key, value in (options or {}).items():
            level.append({"name": key, "type": self._schema_option(schema, key, name)["type"], "value": value})
        resolved: dict[str, dict] = {}
        for key, attachment in (attachments or {}).items():
            self._schema_option(schema, key, name)
            level.append({"name": key, "type": ATTACHMENT_OPTION, "value": str(attachment["id"])})
            resolved[str(attachment["id"])] = {**self._attachment_payload(attachment), "ephemeral": True}
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in schema):
            raise LookupError(f"/{name} {subcommand or ''} needs a subcommand: {[o['name'] for o in schema]}")
        given = {option["name"] for option in level}
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in given]
        if missing:  # Discord's own client does not let a person send the command without them
            raise LookupError(f"/{name} needs options {missing}")
        data = {"id": command["id"], "name": name, "type": CHAT_INPUT, "options": top}
        if resolved:
            data["resolved"] = {"attachments": resolved}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._interact(APPLICATION_COMMAND, user_id, data, guild=guild)

    async def message_command(self, name: str, user_id: int, target: FakeMessage) -> FakeInteraction:
        """A person picks Apps > name on the target message."""
        command = self._find_command(name, MESSAGE_COMMAND, target.guild_id is not None)
        data = {"id": command["id"], "name": name, "type": MESSAGE_COMMAND, "target_id": str(target.id),
                "resolved": {"messages": {str(target.id): self._message_payload(target)}}}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._interact(APPLICATION_COMMAND, user_id, data, guild=target.guild_id is not None)

    async def click(self, custom_id: str, user_id: int, message: FakeMessage, values: list[str] | None = None
                    ) -> FakeInteraction:
        """A person clicks the button (or picks `values` in the select menu) with this custom_id."""
        message = self.messages[message.id]
        kinds = message.custom_ids()
        if custom_id not in kinds:
            raise LookupError(f"message {message.id} has no component {custom_id!r}; it has {sorted(kinds)}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": kinds[custom_id]}
        if values is not None:
            data["values"] = values
        return await self._interact(MESSAGE_COMPONENT, user_id, data, guild=message.guild_id is not None,
                                    message=message)

    async def submit_modal(self, custom_id: str | None, user_id: int, values: dict[str, str]) -> FakeInteraction:
        """A person fills in and submits the modal the bot last showed them with this custom_id (None: the last
        modal shown to them, for bots whose modals get random custom ids). Discord's own client enforces the text
        inputs' required and length rules, so values that break them raise ValueError here."""
        opened = next((i for i in reversed(list(self.interactions.values()))
                       if i.user_id == user_id and i.response and i.response["type"] == 9
                       and custom_id in (None, i.response["data"].get("custom_id"))), None)
        if opened is None:
            raise LookupError(f"no modal {custom_id!r} was shown to user {user_id}")
        custom_id = opened.response["data"]["custom_id"]
        components, unknown = self._modal_answers(opened.response["data"].get("components", []), values)
        if unknown:
            raise LookupError(f"modal {custom_id!r} has no text inputs {sorted(unknown)}")
        data = {"custom_id": custom_id, "components": components}
        message = self.messages.get(opened.message_id) if opened.message_id else None
        return await self._interact(MODAL_SUBMIT, user_id, data, guild=opened.guild_id is not None, message=message)

    # ----- users, guild, channels ------------------------------------------------------------------

    def _snowflake(self) -> int:
        return (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22 | (next(self._ids) & 0x3FFFFF)

    @staticmethod
    def _make_user(user_id: int, name: str, bot: bool = False) -> dict:
        user = {"id": str(user_id), "username": name, "discriminator": "0", "global_name": None if bot else name,
                "avatar": None, "public_flags": 0, "flags": 0}
        if bot:
            user.update(bot=True, verified=True, mfa_enabled=True)
        return user

    def _ensure_user(self, user_id: int) -> None:
        if user_id not in self.users:
            self.add_member(user_id)

    def _role(self, permissions: int, *, name: str = "", bot: bool = False) -> dict:
        if permissions in self._roles and not bot:
            return self._roles[permissions]
        role = {"id": str(self._snowflake()), "name": name or f"perms-{permissions}", "permissions": str(permissions),
                "position": len(self._roles) + 1, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
                "managed": bot, "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None}
        if bot:
            role["tags"] = {"bot_id": str(self.bot_user_id)}
            return role
        self._roles[permissions] = role
        self._dispatch("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": role}, GUILDS_INTENT)
        return role

    def _everyone_role(self) -> dict:
        return {"id": str(self.guild_id), "name": "@everyone", "permissions": str(EVERYONE_PERMISSIONS),
                "position": 0, "color": 0, "colors": {"primary_color": 0}, "hoist": False, "managed": False,
                "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None}

    def _member(self, user_id: int) -> dict:
        if user_id == self.bot_user_id:
            roles = [self._bot_role["id"]]
        else:
            extra = self.member_permissions.get(user_id, 0)
            roles = [self._roles[extra]["id"]] if extra in self._roles else []
        return {"user": self.users[user_id], "roles": roles, "joined_at": "2024-01-01T00:00:00+00:00",
                "deaf": False, "mute": False, "flags": 0, "pending": False, "nick": None, "avatar": None,
                "premium_since": None, "communication_disabled_until": None}

    def _permissions_of(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        bits = EVERYONE_PERMISSIONS | self.member_permissions.get(user_id, 0)
        return ALL_PERMISSIONS if bits & ADMINISTRATOR else bits

    def _premium_tier(self) -> int:
        # discord.py derives guild.filesize_limit from the tier alone: 10 MiB, 50 MiB (tier 2), 100 MiB (tier 3)
        if self.guild_upload_limit >= 100 * 2**20:
            return 3
        return 2 if self.guild_upload_limit >= 50 * 2**20 else 0

    def _guild(self) -> dict:
        return {"id": str(self.guild_id), "name": "Fake Guild", "icon": None, "splash": None, "banner": None,
                "description": None, "owner_id": str(self.owner_id), "region": "deprecated", "afk_channel_id": None,
                "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
                "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "features": [],
                "roles": [self._everyone_role(), self._bot_role, *self._roles.values()], "emojis": [], "stickers": [],
                "premium_tier": self._premium_tier(), "premium_subscription_count": 0, "preferred_locale": "en-US",
                "system_channel_id": str(self.channel_id), "system_channel_flags": 0, "rules_channel_id": None,
                "public_updates_channel_id": None, "vanity_url_code": None, "max_members": 500000,
                "premium_progress_bar_enabled": False, "application_id": None, "widget_enabled": False}

    def _guild_create(self) -> dict:
        return {**self._guild(), "joined_at": "2024-01-01T00:00:00+00:00", "large": False, "unavailable": False,
                "member_count": len(self.member_permissions) + 1, "members": [self._member(self.bot_user_id)],
                "channels": [self._channel()], "threads": [], "presences": [], "voice_states": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": []}

    def _channel(self) -> dict:
        return {"id": str(self.channel_id), "type": 0, "guild_id": str(self.guild_id), "name": "general",
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}

    def _dm_channel(self, user_id: int) -> dict:
        return {"id": str(self.dm_channel_id(user_id)), "type": 1, "last_message_id": None, "flags": 0,
                "recipients": [self.users[user_id]]}

    def _is_dm(self, channel_id: int) -> bool:
        return channel_id in self.dm_channels.values()

    def _channel_payload(self, channel_id: int) -> dict:
        if channel_id == self.channel_id:
            return self._channel()
        for user_id, dm_id in self.dm_channels.items():
            if dm_id == channel_id:
                return self._dm_channel(user_id)
        raise DiscordError(404, 10003, "Unknown Channel")

    def _upload_limit(self, channel_id: int) -> int:
        return DEFAULT_UPLOAD_LIMIT if self._is_dm(channel_id) else self.guild_upload_limit

    # ----- messages and files ----------------------------------------------------------------------

    def _store_file(self, channel_id: int, filename: str, data: bytes, content_type: str | None) -> dict:
        attachment_id = self._snowflake()
        content_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        self.files[attachment_id] = (filename, data, content_type)
        path = f"/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        attachment = {"id": str(attachment_id), "filename": filename, "size": len(data), "content_type": content_type,
                      "url": self.url + path, "proxy_url": self.url + "/media" + path, "data": data}
        size = _image_size(data) if content_type.startswith("image/") else None
        if size:
            attachment["width"], attachment["height"] = size
        return attachment

    @staticmethod
    def _attachment_payload(attachment: dict) -> dict:
        return {k: v for k, v in attachment.items() if k != "data"}

    def _message(self, channel_id: int, author_id: int, **fields) -> FakeMessage:
        """A new message object, not stored yet."""
        guild_id = None if self._is_dm(channel_id) else self.guild_id
        return FakeMessage(id=self._snowflake(), channel_id=channel_id, author_id=author_id, guild_id=guild_id,
                           **fields)

    def _message_payload(self, message: FakeMessage, *, with_reference: bool = True) -> dict:
        payload = {"id": str(message.id), "channel_id": str(message.channel_id),
                   "author": self.users[message.author_id], "content": message.content,
                   "timestamp": message.timestamp, "edited_timestamp": message.edited_timestamp, "tts": False,
                   "mention_everyone": False, "mentions": [], "mention_roles": [], "mention_channels": [],
                   "attachments": [self._attachment_payload(a) for a in message.attachments],
                   "embeds": message.embeds, "components": message.components, "pinned": False,
                   "type": message.type, "flags": message.flags, "reactions": []}
        if message.guild_id:
            payload["guild_id"] = str(message.guild_id)
        if message.webhook_id:
            payload["webhook_id"] = payload["application_id"] = str(message.webhook_id)
        if message.message_reference:
            payload["message_reference"] = message.message_reference
            referenced = self.messages.get(int(message.message_reference["message_id"]))
            if with_reference:
                payload["referenced_message"] = (self._message_payload(referenced, with_reference=False)
                                                 if referenced and not referenced.deleted else None)
        return payload

    def _check_files(self, files: dict[int, tuple[str, bytes]], limit: int) -> None:
        if any(len(data) > limit for _, data in files.values()):
            raise DiscordError(413, 40005, "Request entity too large")

    def _apply(self, message: FakeMessage, payload: dict, files: dict[int, tuple[str, bytes]], *, edit: bool,
               flag_mask: int = EDIT_FLAGS) -> None:
        """Applies a create/edit body: fields present replace; on edits `attachments` lists the ones to keep."""
        if edit:
            message.history.append(message.snapshot())
        message.flags |= int(payload.get("flags") or 0) & flag_mask
        if "content" in payload:
            message.content = payload["content"] or ""
        for key in ("embeds", "components"):
            if key in payload:
                setattr(message, key, payload[key] or [])
        listed = payload.get("attachments") or []
        new_ids = {str(i) for i in files}
        meta = {str(a["id"]): a for a in listed if str(a.get("id")) in new_ids}
        kept = message.attachments
        if edit and "attachments" in payload:
            keep = {str(a["id"]) for a in listed if str(a.get("id")) not in new_ids}
            kept = [a for a in message.attachments if a["id"] in keep]
        new = []
        for index, (filename, data) in sorted(files.items()):
            name = meta.get(str(index), {}).get("filename") or filename
            attachment = self._store_file(message.channel_id, name, data, None)
            if meta.get(str(index), {}).get("description"):
                attachment["description"] = meta[str(index)]["description"]
            new.append(attachment)
        message.attachments = kept + new
        self._validate(message)

    @staticmethod
    def _validate(message: FakeMessage) -> None:
        if len(message.content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(message.embeds) > 10:
            raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if not (message.content or message.embeds or message.attachments or message.components or message.loading):
            raise DiscordError(400, 50006, "Cannot send an empty message")

    def _create(self, channel_id: int, payload: dict, files: dict, *, limit: int, flag_mask: int = SEND_FLAGS,
                **fields) -> FakeMessage:
        """A new bot message; validated before it is stored so that a refused one leaves no trace."""
        self._check_files(files, limit)
        message = self._message(channel_id, self.bot_user_id, **fields)
        self._apply(message, payload, files, edit=False, flag_mask=flag_mask)
        self.messages[message.id] = message
        if not message.ephemeral:
            self._dispatch("MESSAGE_CREATE", self._message_payload(message), self._message_intent(channel_id))
        return message

    def _edit(self, message: FakeMessage, payload: dict, files: dict, *, limit: int, fill: bool = False
              ) -> FakeMessage:
        """An edit; `fill` completes a deferred ("thinking") message instead, which Discord does not mark edited."""
        self._check_files(files, limit)
        before = (message.snapshot(), list(message.history))
        try:
            self._apply(message, payload, files, edit=True)
        except DiscordError:
            snapshot, message.history = before
            for key, value in snapshot.items():
                setattr(message, key, value)
            raise
        message.flags &= ~LOADING
        if not fill:
            message.edits += 1
            message.edited_timestamp = now_iso()
        if not message.ephemeral:
            self._dispatch("MESSAGE_UPDATE", self._message_payload(message), self._message_intent(message.channel_id))
        return message

    def _live_message(self, message_id: int, *, channel_id: int | None = None) -> FakeMessage:
        message = self.messages.get(message_id)
        if message is None or message.deleted or (channel_id is not None and message.channel_id != channel_id):
            raise unknown_message()
        return message

    # ----- interactions ----------------------------------------------------------------------------

    def _find_command(self, name: str, kind: int, guild: bool) -> dict:
        scopes = [self.guild_id, None] if guild else [None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == kind:
                    return command
        where = "this guild or globally" if guild else "globally (DMs only see global commands)"
        raise LookupError(f"no command {name!r} of type {kind} registered {where}; sync the command tree first")

    @staticmethod
    def _schema_option(schema: list[dict], name: str, command: str) -> dict:
        for option in schema:
            if option["name"] == name:
                return option
        raise LookupError(f"/{command} has no option {name!r}; it has {[o['name'] for o in schema]}")

    @staticmethod
    def _modal_answers(components: list[dict], values: dict[str, str]) -> tuple[list[dict], set[str]]:
        """The submitted components, in the layout of the modal that was shown (action rows or labels)."""
        unknown = set(values)

        def answer(item: dict) -> dict | None:
            if item.get("type") != TEXT_INPUT:
                return None
            unknown.discard(item["custom_id"])
            value = values.get(item["custom_id"], item.get("value") or "")
            low, high = item.get("min_length") or 0, item.get("max_length") or 4000
            if (not value and item.get("required", True)) or (value and not low <= len(value) <= high):
                raise ValueError(f"text input {item['custom_id']!r} takes {low}..{high} characters, not {value!r}")
            return {"type": TEXT_INPUT, "custom_id": item["custom_id"], "value": value}

        submitted = []
        for row in components:
            if row.get("type") == LABEL and (inner := answer(row.get("component", {}))):
                submitted.append({"type": LABEL, "component": inner})
            elif row.get("type") == 1:
                inputs = [a for a in map(answer, row.get("components", [])) if a]
                if inputs:
                    submitted.append({"type": 1, "components": inputs})
        return submitted, unknown

    async def _interact(self, kind: int, user_id: int, data: dict, *, guild: bool,
                        message: FakeMessage | None = None) -> FakeInteraction:
        await self.wait_ready()
        self._ensure_user(user_id)
        interaction_id = self._snowflake()
        channel_id = message.channel_id if message else (self.channel_id if guild else self.dm_channel_id(user_id))
        limit = self.guild_upload_limit if guild else DEFAULT_UPLOAD_LIMIT
        interaction = FakeInteraction(id=interaction_id, token=f"aW50ZXJhY3Rpb24{secrets.token_urlsafe(24)}",
                                      user_id=user_id, type=kind, channel_id=channel_id,
                                      guild_id=self.guild_id if guild else None,
                                      message_id=message.id if message else None, attachment_size_limit=limit,
                                      fake=self)
        payload = {"id": str(interaction_id), "application_id": str(self.application_id), "type": kind,
                   "data": data, "token": interaction.token, "version": 1, "channel_id": str(channel_id),
                   "locale": "en-US", "entitlements": [], "attachment_size_limit": limit,
                   "app_permissions": str(EVERYONE_PERMISSIONS), "context": 0 if guild else 1}
        if guild:
            payload.update(guild_id=str(self.guild_id), guild={"id": str(self.guild_id), "locale": "en-US",
                                                                "features": []}, guild_locale="en-US",
                           channel={**self._channel(), "permissions": str(self._permissions_of(user_id))},
                           member={**self._member(user_id), "permissions": str(self._permissions_of(user_id))},
                           authorizing_integration_owners={"0": str(self.guild_id)})
        else:
            payload.update(user=self.users[user_id], channel=self._dm_channel(user_id),
                           authorizing_integration_owners={"0": "0"})
        if message:
            payload["message"] = self._message_payload(message)
        interaction.payload = payload
        self.interactions[interaction_id] = interaction
        self._dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _interaction_by_token(self, application_id: str, token: str) -> FakeInteraction:
        if application_id == str(self.application_id):
            for interaction in self.interactions.values():
                if interaction.token == token:
                    if interaction.expired or time.monotonic() - interaction.created > self.token_lifetime:
                        raise DiscordError(401, 50027, "Invalid Webhook Token")
                    return interaction
        raise DiscordError(404, 10015, "Unknown Webhook")

    def _callback(self, interaction: FakeInteraction, body: dict, files: dict) -> FakeMessage | None:
        """What each callback type does; returns the message it created or changed."""
        kind, data = body.get("type"), body.get("data") or {}
        on_message = interaction.message_id is not None
        if kind == 4:
            message = self._create(interaction.channel_id, data, files, limit=interaction.attachment_size_limit,
                                   flag_mask=SEND_FLAGS | EPHEMERAL, **self._response_fields(interaction))
            interaction.original_id = message.id
            return message
        if kind == 5:
            message = self._create(interaction.channel_id, {}, {}, limit=interaction.attachment_size_limit,
                                   flags=LOADING | (data.get("flags", 0) & EPHEMERAL),
                                   **self._response_fields(interaction))
            interaction.original_id = message.id
            return message
        if kind in (6, 7) and on_message:
            interaction.original_id = interaction.message_id
            message = self._live_message(interaction.message_id)
            if kind == 7:
                self._edit(message, data, files, limit=interaction.attachment_size_limit)
            return message
        if kind == 6 and interaction.type == MODAL_SUBMIT:
            return None  # a plain acknowledgement of a modal opened by a command: nothing to update
        if kind == 9 and interaction.type in (APPLICATION_COMMAND, MESSAGE_COMPONENT):
            return None
        if kind == 8 and interaction.type == AUTOCOMPLETE:
            return None
        raise DiscordError(400, 40043 if kind == 9 else 50035, f"Interaction callback type {kind} is not valid here")

    def _response_fields(self, interaction: FakeInteraction) -> dict:
        # reply types: 20 answers a slash command, 23 a context menu, 0 a component or modal
        command_type = interaction.payload.get("data", {}).get("type", CHAT_INPUT)
        message_type = 0 if interaction.type != APPLICATION_COMMAND else 20 if command_type == CHAT_INPUT else 23
        return {"type": message_type, "webhook_id": self.application_id, "interaction_id": interaction.id}

    # ----- gateway ---------------------------------------------------------------------------------

    def _message_intent(self, channel_id: int) -> int:
        return DIRECT_MESSAGES_INTENT if self._is_dm(channel_id) else GUILD_MESSAGES_INTENT

    def _dispatch(self, event: str, data: dict, intent: int = 0) -> None:
        session = self._session
        if session is None or (intent and not session.intents & intent):
            return  # nobody has identified, or the bot did not ask for this kind of event
        session.sequence += 1
        frame = {"op": 0, "t": event, "s": session.sequence, "d": data}
        if self._gateway is not None:
            self._gateway.send(frame)
        else:
            session.missed.append(frame)  # replayed if the client resumes, as Discord does

    async def _gateway_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        gateway = _Gateway(ws)
        self._sockets.add(ws)
        pump = asyncio.create_task(gateway.pump())
        gateway.send({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        try:
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    self._on_gateway_frame(gateway, json.loads(frame.data))
        finally:
            gateway.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 1)
            pump.cancel()
            self._sockets.discard(ws)
            if self._gateway is gateway:
                self._gateway = None
                self._ready.clear()
        return ws

    def _on_gateway_frame(self, gateway: _Gateway, frame: dict) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == 1:  # heartbeat
            gateway.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # identify
            self._on_identify(gateway, data)
        elif op == 6:
            self._on_resume(gateway, data)
        elif op == 8 and gateway is self._gateway:  # request guild members
            members = [self._member(u) for u in (self.bot_user_id, *self.member_permissions)]
            self._dispatch("GUILD_MEMBERS_CHUNK", self._strip_none({
                "guild_id": str(self.guild_id), "members": members, "chunk_index": 0, "chunk_count": 1,
                "nonce": data.get("nonce")}))

    def _on_identify(self, gateway: _Gateway, data: dict) -> None:
        self.identify = data
        self._session = _Session(id=secrets.token_hex(16), intents=int(data.get("intents") or 0))
        self._gateway = gateway
        self._dispatch("READY", {
            "v": 10, "user": self.users[self.bot_user_id], "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": self._session.id, "resume_gateway_url": self.gateway_url,
            "shard": data.get("shard") or [0, 1], "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
            "user_settings": {}})
        self._dispatch("GUILD_CREATE", self._guild_create())
        gateway.after_sent(self._ready.set)

    def _on_resume(self, gateway: _Gateway, data: dict) -> None:
        session = self._session
        if session is None or data.get("session_id") != session.id:
            gateway.send({"op": 9, "d": False, "s": None, "t": None})  # invalid session: identify again
            return
        self._gateway = gateway
        for frame in session.missed:
            if frame["s"] > (data.get("seq") or 0):
                gateway.send(frame)
        session.missed.clear()
        self._dispatch("RESUMED", {})
        gateway.after_sent(self._ready.set)

    # ----- REST ------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        self.requests.append((request.method, request.path_qs))
        route = f"{request.method} {request.path}"
        for limit in self._rate_limits:
            if limit[1] > 0 and limit[0] in route:
                limit[1] -= 1
                return self._too_many_requests(limit[2], bucket=limit[0])
        for failure in self._failures:
            if failure[1] > 0 and failure[0] in route:
                failure[1] -= 1
                return failure[2].response()
        public = ("/interactions/", "/webhooks/")
        if not request.headers.get("Authorization", "").startswith("Bot ") and not any(
                p in request.path for p in public):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        try:
            return await handler(request)
        except DiscordError as error:
            return error.response()
        except web.HTTPNotFound:
            return json_response({"message": "404: Not Found", "code": 0}, 404)
        except web.HTTPMethodNotAllowed:
            return json_response({"message": "405: Method Not Allowed", "code": 0}, 405)
        except json.JSONDecodeError:
            return json_response({"message": "The request body contains invalid JSON.", "code": 50109}, 400)
        except Exception as error:  # a request the fake cannot handle: a 500 would have discord.py retry for 25 s
            self.errors.append(f"{route}: {traceback.format_exc()}")
            return json_response({"message": f"fake_discord cannot handle this: {error!r}", "code": 50035}, 400)

    @staticmethod
    def _too_many_requests(retry_after: float, bucket: str) -> web.Response:
        # discord.py retries a 429 only when a Via header is present (else it assumes a Cloudflare ban)
        headers = {"Via": "1.1 google", "Retry-After": str(max(1, round(retry_after))),
                   "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                   "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                   "X-RateLimit-Bucket": hashlib.sha1(bucket.encode()).hexdigest()[:32], "X-RateLimit-Scope": "user"}
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        return json_response(body, 429, headers)

    def _add_rest_routes(self, router: web.UrlDispatcher) -> None:
        p = API_PREFIX
        router.add_get(p + "/gateway", self._get_gateway)
        router.add_get(p + "/gateway/bot", self._get_gateway)
        router.add_get(p + "/users/@me", self._get_me)
        router.add_post(p + "/users/@me/channels", self._create_dm)
        router.add_get(p + "/users/{user}", self._get_user)
        router.add_get(p + "/oauth2/applications/@me", self._get_application)
        router.add_get(p + "/applications/@me", self._get_application)
        for scope in ("/applications/{app}/commands", "/applications/{app}/guilds/{guild}/commands"):
            router.add_get(p + scope, self._get_commands)
            router.add_put(p + scope, self._put_commands)
            router.add_post(p + scope, self._post_command)
            router.add_delete(p + scope + "/{command}", self._delete_command)
        router.add_post(p + "/interactions/{id}/{token}/callback", self._interaction_callback)
        router.add_post(p + "/webhooks/{app}/{token}", self._followup)
        router.add_get(p + "/webhooks/{app}/{token}/messages/{message}", self._get_webhook_message)
        router.add_patch(p + "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message)
        router.add_delete(p + "/webhooks/{app}/{token}/messages/{message}", self._delete_webhook_message)
        router.add_get(p + "/channels/{channel}", self._get_channel)
        router.add_post(p + "/channels/{channel}/typing", self._typing)
        router.add_post(p + "/channels/{channel}/messages", self._post_channel_message)
        router.add_get(p + "/channels/{channel}/messages/{message}", self._get_channel_message)
        router.add_patch(p + "/channels/{channel}/messages/{message}", self._edit_channel_message)
        router.add_delete(p + "/channels/{channel}/messages/{message}", self._delete_channel_message)
        router.add_get(p + "/guilds/{guild}", self._get_guild)
        router.add_get(p + "/guilds/{guild}/channels", self._get_guild_channels)
        router.add_get(p + "/guilds/{guild}/roles", self._get_roles)
        router.add_get(p + "/guilds/{guild}/members/{user}", self._get_member)

    @staticmethod
    async def _body(request: web.Request) -> tuple[dict, dict[int, tuple[str, bytes]]]:
        """JSON, or multipart with payload_json and files[n] as discord.py sends them."""
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            payload = json.loads(str(form.get("payload_json") or "{}"))
            files = {}
            for key, value in form.items():
                match = re.fullmatch(r"files\[(\d+)\]", key)
                if match and isinstance(value, web.FileField):
                    files[int(match[1])] = (value.filename, value.file.read())
            return payload, files
        if request.can_read_body:
            return await request.json(), {}
        return {}, {}

    @staticmethod
    def _strip_none(data: dict) -> dict:
        return {k: v for k, v in data.items() if v is not None}

    def _check_guild(self, request: web.Request) -> None:
        if request.match_info.get("guild", str(self.guild_id)) != str(self.guild_id):
            raise DiscordError(404, 10004, "Unknown Guild")

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}})

    async def _get_me(self, request: web.Request) -> web.Response:
        return json_response({**self.users[self.bot_user_id], "locale": "en-US", "email": None})

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return json_response(user)

    async def _create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self._body(request)
        user_id = int(body["recipient_id"])
        if user_id not in self.users:
            raise DiscordError(404, 10013, "Unknown User")
        return json_response(self._dm_channel(user_id))

    async def _get_application(self, request: web.Request) -> web.Response:
        return json_response({
            "id": str(self.application_id), "name": "FramePack", "icon": None, "description": "", "summary": "",
            "bot_public": True, "bot_require_code_grant": False, "owner": self.users[self.owner_id],
            "verify_key": "0" * 64, "team": None, "flags": 0, "rpc_origins": [], "tags": [],
            "interactions_endpoint_url": None, "bot": self.users[self.bot_user_id],
            "integration_types_config": {"0": {}}, "approximate_guild_count": 1})

    def _command_scope(self, request: web.Request) -> int | None:
        if request.match_info["app"] != str(self.application_id):
            raise DiscordError(404, 10002, "Unknown Application")
        self._check_guild(request)
        return int(request.match_info["guild"]) if "guild" in request.match_info else None

    def _registered(self, scope: int | None, command: dict, previous: dict | None) -> dict:
        registered = {"type": 1, "description": "", "options": [], "default_member_permissions": None,
                      "nsfw": False, **command, "id": previous["id"] if previous else str(self._snowflake()),
                      "application_id": str(self.application_id), "version": str(self._snowflake())}
        if scope is not None:
            registered["guild_id"] = str(scope)
        else:
            registered.setdefault("contexts", [0, 1, 2])
            registered.setdefault("integration_types", [0])
        return registered

    async def _get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.commands.get(self._command_scope(request), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body, _ = await self._body(request)
        old = {(c["name"], c.get("type", 1)): c for c in self.commands.get(scope, [])}
        self.commands[scope] = [self._registered(scope, c, old.get((c["name"], c.get("type", 1)))) for c in body]
        return json_response(self.commands[scope])

    async def _post_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body, _ = await self._body(request)
        existing = self.commands.setdefault(scope, [])
        same = [c for c in existing if (c["name"], c.get("type", 1)) == (body["name"], body.get("type", 1))]
        command = self._registered(scope, body, same[0] if same else None)
        self.commands[scope] = [c for c in existing if c not in same] + [command]
        return json_response(command, 200 if same else 201)

    async def _delete_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        self.commands[scope] = [c for c in self.commands.get(scope, []) if c["id"] != request.match_info["command"]]
        return web.Response(status=204)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(int(request.match_info["id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.response is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created > self.ack_deadline:
            raise DiscordError(404, 10062, "Unknown interaction")
        body, files = await self._body(request)
        message = self._callback(interaction, body, files)
        interaction.response = {"type": body.get("type"), "data": body.get("data") or {}}
        self.responses.append({"interaction_id": interaction.id, **interaction.response})
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        summary: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        resource: dict[str, Any] = {"type": body.get("type")}
        if message is not None:
            summary.update(response_message_id=str(message.id), response_message_loading=message.loading,
                           response_message_ephemeral=message.ephemeral)
            resource["message"] = self._message_payload(message)
        return json_response({"interaction": summary, "resource": resource})

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_by_token(request.match_info["app"], request.match_info["token"])
        if interaction.response is None:
            raise DiscordError(404, 10015, "Unknown Webhook")  # no follow-ups before the interaction is answered
        body, files = await self._body(request)
        original = interaction.original()
        if original is not None and original.loading and not original.deleted and interaction.response["type"] == 5:
            # the first follow-up after a "thinking" defer becomes the deferred message, keeping its ephemerality
            message = self._edit(original, body, files, limit=interaction.attachment_size_limit, fill=True)
        else:
            message = self._create(interaction.channel_id, body, files, limit=interaction.attachment_size_limit,
                                   flag_mask=SEND_FLAGS | EPHEMERAL, webhook_id=self.application_id,
                                   interaction_id=interaction.id)
        interaction.followup_ids.append(message.id)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(self._message_payload(message))
        return web.Response(status=204)

    def _webhook_message(self, request: web.Request) -> tuple[FakeInteraction, FakeMessage]:
        interaction = self._interaction_by_token(request.match_info["app"], request.match_info["token"])
        wanted = request.match_info["message"]
        if wanted == "@original":
            if interaction.original_id is None:
                raise unknown_message()
            return interaction, self._live_message(interaction.original_id)
        if int(wanted) not in (interaction.original_id, *interaction.followup_ids):
            raise unknown_message()
        return interaction, self._live_message(int(wanted))

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        return json_response(self._message_payload(self._webhook_message(request)[1]))

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        body, files = await self._body(request)
        self._edit(message, body, files, limit=interaction.attachment_size_limit)
        return json_response(self._message_payload(message))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        self.delete_message(self._webhook_message(request)[1].id)
        return web.Response(status=204)

    def _channel_id(self, request: web.Request) -> int:
        channel_id = int(request.match_info["channel"])
        self._channel_payload(channel_id)  # 404 Unknown Channel if there is none
        return channel_id

    def _channel_message(self, request: web.Request) -> FakeMessage:
        message = self._live_message(int(request.match_info["message"]), channel_id=self._channel_id(request))
        if message.ephemeral:
            raise unknown_message()  # ephemeral messages exist only for their interaction's webhook
        return message

    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel_payload(int(request.match_info["channel"])))

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel_id(request)
        return web.Response(status=204)

    async def _post_channel_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel_id(request)
        if channel_id in self.forbidden_channels:
            if self._is_dm(channel_id):
                raise DiscordError(403, 50007, "Cannot send messages to this user")
            raise DiscordError(403, 50013, "Missing Permissions")
        body, files = await self._body(request)
        reference = body.get("message_reference")
        fields: dict[str, Any] = {}
        if reference:
            target = self.messages.get(int(reference["message_id"]))
            if target is not None and not target.deleted and target.channel_id == channel_id:
                fields.update(message_reference={"type": 0, "message_id": str(target.id),
                                                 "channel_id": str(channel_id), **self._guild_ref(target)}, type=19)
            elif reference.get("fail_if_not_exists", True):
                raise form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
        message = self._create(channel_id, body, files, limit=self._upload_limit(channel_id), **fields)
        return json_response(self._message_payload(message))

    @staticmethod
    def _guild_ref(message: FakeMessage) -> dict:
        return {"guild_id": str(message.guild_id)} if message.guild_id else {}

    async def _get_channel_message(self, request: web.Request) -> web.Response:
        return json_response(self._message_payload(self._channel_message(request)))

    async def _edit_channel_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message.author_id != self.bot_user_id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body, files = await self._body(request)
        self._edit(message, body, files, limit=self._upload_limit(message.channel_id))
        return json_response(self._message_payload(message))

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        self.delete_message(self._channel_message(request).id)
        return web.Response(status=204)

    async def _get_guild(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        guild = self._guild()
        if request.query.get("with_counts") in ("1", "true"):
            guild.update(approximate_member_count=len(self.member_permissions) + 1, approximate_presence_count=0)
        return json_response(guild)

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        return json_response([self._channel()])

    async def _get_roles(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        return json_response(self._guild()["roles"])

    async def _get_member(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        user_id = int(request.match_info["user"])
        if user_id != self.bot_user_id and user_id not in self.member_permissions:
            raise DiscordError(404, 10007, "Unknown Member")
        return json_response(self._member(user_id))

    async def _file(self, request: web.Request) -> web.Response:
        stored = self.files.get(int(request.match_info["id"]))
        if stored is None:
            return web.Response(status=404, text="Not Found")
        _, data, content_type = stored
        return web.Response(body=data, headers={"Content-Type": content_type})


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height, as Discord reports them for images; None when the bytes are not a picture."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:  # PIL refuses to open it; Discord still reports the size of a huge PNG
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        return None
