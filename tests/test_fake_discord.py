"""The real discord.py client against the fake Discord: proof that the fake speaks enough of the protocol."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

import discord
import pytest
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from fake_discord import EPHEMERAL, MANAGE_GUILD, FakeDiscord

PERSON, ADMIN = 501, 900
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # declared image/png; the bytes are what matters here
VIDEO = b"\x00\x00\x00\x20ftypisom" + b"v" * 5000


class CancelView(discord.ui.View):
    """A persistent view, as a bot that outlives restarts uses: found by custom_id, not by message."""

    def __init__(self, seen: dict):
        super().__init__(timeout=None)
        self.seen = seen

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.danger, custom_id="cancel:7")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.seen["cancel_by"] = interaction.user.id
        await interaction.response.edit_message(content="cancelled", view=None)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"test:reroll:(?P<job>\d+)"):
    """A button any later run of the bot understands: the job is in its custom_id."""

    def __init__(self, job: int):
        super().__init__(discord.ui.Button(label="Re-roll", custom_id=f"test:reroll:{job}"))
        self.job = job

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item, match) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.seen["reroll_job"] = self.job
        await interaction.response.send_message("queued again", ephemeral=True)


class PromptModal(discord.ui.Modal, title="Animate this image"):
    prompt = discord.ui.TextInput(label="Prompt", custom_id="prompt", max_length=200)

    def __init__(self, seen: dict, image_url: str):
        super().__init__(custom_id="prompt-modal")
        self.seen, self.image_url = seen, image_url

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.seen["prompt"] = self.prompt.value
        await interaction.response.send_message(f"queued {self.prompt.value}", ephemeral=True)


class Bot(discord.Client):
    def __init__(self, seen: dict, intents: discord.Intents | None = None):
        super().__init__(intents=intents or discord.Intents.default(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.seen = seen

    async def on_message(self, message: discord.Message) -> None:
        self.seen.setdefault("on_message", []).append((message.author.id, message.content))

    async def setup_hook(self) -> None:
        # Route.BASE points REST at the fake; the gateway address comes from the fake's /gateway/bot
        _, url, _ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        self.add_view(CancelView(self.seen))
        self.add_dynamic_items(RerollButton)


def build_commands(bot: Bot, guild: discord.Object, gates: dict[str, asyncio.Event]) -> None:
    seen, tree = bot.seen, bot.tree

    @tree.command(name="animate", description="Animate a picture", guild=guild)
    async def animate(interaction: discord.Interaction, image: discord.Attachment, prompt: str, seconds: float = 5.0):
        await interaction.response.defer(thinking=True)
        seen.update(image=await image.read(), content_type=image.content_type, size=image.size, prompt=prompt,
                    seconds=seconds, filesize_limit=interaction.filesize_limit, guild=interaction.guild)
        await interaction.edit_original_response(content="queued", view=CancelView(seen))
        try:
            followup = await interaction.followup.send("preview", file=discord.File(io.BytesIO(VIDEO), "out.mp4"),
                                                       wait=True)
        except discord.HTTPException as error:
            seen["followup_error"] = (error.status, error.code)
            return
        seen["followup_id"] = followup.id
        await interaction.edit_original_response(content="section 1/3")
        seen["animate_done"] = True

    @tree.command(name="result", description="A file and a button in the first response", guild=guild)
    async def result(interaction: discord.Interaction):
        view = discord.ui.View(timeout=60)
        button = discord.ui.Button(label="Re-roll")

        async def reroll(clicked: discord.Interaction) -> None:
            await clicked.response.defer()
            await clicked.edit_original_response(content="re-rolling", view=None)
            note = await clicked.followup.send("queued again", ephemeral=True, wait=True)
            await note.edit(content="queued again, position 1")
            seen["reroll_done"] = True

        button.callback = reroll
        view.add_item(button)
        await interaction.response.send_message("done", file=discord.File(io.BytesIO(VIDEO), "v.mp4"), view=view)
        seen["result_interaction"] = interaction

    @tree.command(name="progress", description="A message the test deletes", guild=guild)
    async def progress(interaction: discord.Interaction):
        await interaction.response.send_message("section 1/3")
        original = await interaction.original_response()
        seen["progress_id"] = original.id
        await gates["deleted"].wait()
        for name, edit in (("webhook", interaction.edit_original_response),
                           ("channel", interaction.channel.get_partial_message(original.id).edit)):
            try:
                await edit(content="section 2/3")
            except discord.NotFound as error:
                seen[f"{name}_error"] = error.code

    @tree.command(name="whoami", description="Permissions as the bot sees them", guild=guild)
    async def whoami(interaction: discord.Interaction):
        member = interaction.user
        seen.update(manage_guild=interaction.permissions.manage_guild,
                    role_manage_guild=member.guild_permissions.manage_guild, name=member.name)
        await interaction.response.send_message("ok", ephemeral=True)

    admin = app_commands.Group(name="admin", description="Admin", guild_ids=[guild.id])

    @admin.command(name="set-limit", description="Change a limit")
    async def set_limit(interaction: discord.Interaction, name: str, value: int):
        seen["limit"] = (name, value)
        await interaction.response.send_message(f"{name}={value}", ephemeral=True)

    tree.add_command(admin)

    @tree.command(name="slow", description="Answers too late", guild=guild)
    async def slow(interaction: discord.Interaction):
        await asyncio.sleep(0.3)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as error:
            seen["slow_error"] = error.code

    @tree.command(name="ping", description="Works in DMs too")
    async def ping(interaction: discord.Interaction):
        seen.update(dm_guild=interaction.guild, dm_limit=interaction.filesize_limit,
                    dm_channel=type(interaction.channel).__name__)
        await interaction.response.send_message("pong")

    @tree.context_menu(name="Animate this image", guild=guild)
    async def animate_this(interaction: discord.Interaction, message: discord.Message):
        seen["target_image"] = await message.attachments[0].read()
        await interaction.response.send_modal(PromptModal(seen, message.attachments[0].url))


@dataclass
class Env:
    fake: FakeDiscord
    bot: Bot
    seen: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)


@pytest.fixture()
async def connect(monkeypatch):
    """connect(**fake_options) starts a fake and a real discord.py client on it, synced; connect(fake=...) starts
    another client on an existing fake (a bot restart). Everything is closed after the test."""
    bots: list[tuple[Bot, asyncio.Task]] = []
    fakes: list[FakeDiscord] = []
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)  # restored after

    async def open_env(fake: FakeDiscord | None = None, intents: discord.Intents | None = None, **options) -> Env:
        if fake is None:
            fake = FakeDiscord(**options)
            await fake.start()
            fakes.append(fake)
        monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
        seen: dict[str, Any] = {}
        bot = Bot(seen, intents)
        env = Env(fake, bot, seen, {"deleted": asyncio.Event()})
        build_commands(bot, discord.Object(fake.guild_id), env.gates)
        task = asyncio.create_task(bot.start("fake-token"))
        bots.append((bot, task))
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        await fake.wait_ready()
        await bot.tree.sync(guild=discord.Object(fake.guild_id))
        await bot.tree.sync()
        return env

    async def close(env: Env) -> None:
        for bot, task in bots:
            if bot is env.bot:
                await bot.close()
                await asyncio.wait_for(task, 5)

    open_env.close = close
    yield open_env
    for bot, task in bots:
        await bot.close()
        await asyncio.wait_for(task, 5)
    for fake in fakes:
        await fake.stop()


async def test_connects_identifies_and_syncs(connect):
    env = await connect()
    fake, bot = env.fake, env.bot
    assert fake.identify["token"] == "fake-token"
    assert fake.identify["intents"] == discord.Intents.default().value  # no privileged intents
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.get_channel(fake.channel_id).name == "general"
    assert guild.me.id == bot.user.id == fake.bot_user_id and bot.application_id == fake.application_id
    assert guild.filesize_limit == 10 * 1024 * 1024
    names = {(c["name"], c["type"]) for c in fake.commands[fake.guild_id]}
    assert names == {("animate", 1), ("result", 1), ("progress", 1), ("whoami", 1), ("admin", 1), ("slow", 1),
                     ("Animate this image", 3)}
    assert [c["name"] for c in fake.commands[None]] == ["ping"]
    assert [c.name for c in await bot.tree.fetch_commands(guild=discord.Object(fake.guild_id))] == [
        c["name"] for c in fake.commands[fake.guild_id]]
    assert (await bot.fetch_channel(fake.channel_id)).id == fake.channel_id


async def test_slash_command_with_attachment_defer_edit_and_followup_file(connect):
    env = await connect(guild_upload_limit=50 * 1024 * 1024)
    fake = env.fake
    image = fake.upload("cat.png", PICTURE, "image/png")
    interaction = await fake.slash_command("animate", PERSON, {"prompt": "a cat turns", "seconds": 3.5},
                                           attachments={"image": image})
    assert (await interaction.wait_response())["type"] == 5
    await fake.wait_for(lambda: "animate_done" in env.seen)
    assert env.seen["image"] == PICTURE and env.seen["content_type"] == "image/png"
    assert env.seen["prompt"] == "a cat turns" and env.seen["seconds"] == 3.5 and env.seen["size"] == len(PICTURE)
    assert env.seen["filesize_limit"] == 50 * 1024 * 1024 and env.seen["guild"].filesize_limit == 50 * 1024 * 1024
    # the first follow-up after a "thinking" defer would have filled the deferred message; this one came after
    # an edit, so it is a message of its own
    original, followups = interaction.original(), interaction.followups()
    assert original.content == "section 1/3" and original.history[-1]["content"] == "queued"
    assert original.edits == 2 and original.history[0]["flags"] & 128  # first version: the loading message
    assert original.components[0]["components"][0]["custom_id"] == "cancel:7"
    assert [m.id for m in followups] == [env.seen["followup_id"]]
    video = followups[0].attachments[0]
    assert video["data"] == VIDEO and video["filename"] == "out.mp4" and video["content_type"] == "video/mp4"
    assert video["size"] == len(VIDEO) and followups[0].content == "preview"
    assert fake.requests_to("POST /api/v10/interactions/")[0][1].endswith("with_response=1")


async def test_first_followup_after_thinking_defer_fills_the_deferred_message(connect):
    env = await connect()
    fake = env.fake

    @env.bot.tree.command(name="fill", description="defer then follow up", guild=discord.Object(fake.guild_id))
    async def fill(interaction: discord.Interaction):
        await interaction.response.defer(thinking=True, ephemeral=True)
        first = await interaction.followup.send("first", wait=True)
        second = await interaction.followup.send("second", wait=True)
        env.seen["ids"] = (first.id, second.id, first.flags.ephemeral, second.flags.ephemeral)

    await env.bot.tree.sync(guild=discord.Object(fake.guild_id))
    interaction = await fake.slash_command("fill", PERSON)
    first_id, second_id, first_ephemeral, second_ephemeral = await fake.wait_for(lambda: env.seen.get("ids"))
    assert first_id == interaction.original().id != second_id
    assert first_ephemeral and not second_ephemeral  # the defer decided the first one's ephemerality
    assert [m.content for m in interaction.followups()] == ["first", "second"]


async def test_button_click_updates_the_message(connect):
    env = await connect()
    fake = env.fake
    interaction = await fake.slash_command("animate", PERSON, {"prompt": "p"},
                                           attachments={"image": fake.upload("a.png", PICTURE)})
    await fake.wait_for(lambda: "animate_done" in env.seen)
    message = interaction.original()
    click = await fake.click("cancel:7", ADMIN, message)
    assert (await click.wait_response())["type"] == 7
    assert env.seen["cancel_by"] == ADMIN
    assert message.content == "cancelled" and message.components == [] and click.original() is message
    with pytest.raises(LookupError):
        await fake.click("cancel:7", ADMIN, message)  # the button is gone


async def test_context_menu_opens_a_modal_and_the_submit_is_answered(connect):
    env = await connect()
    fake = env.fake
    posted = fake.post_user_message(PERSON, "look", attachments=[fake.upload("dog.png", PICTURE, "image/png")])
    opened = await fake.message_command("Animate this image", PERSON, posted)
    response = await opened.wait_response()
    assert response["type"] == 9 and response["data"]["custom_id"] == "prompt-modal"
    assert env.seen["target_image"] == PICTURE
    submitted = await fake.submit_modal("prompt-modal", PERSON, {"prompt": "the dog runs"})
    assert (await submitted.wait_response())["type"] == 4
    assert env.seen["prompt"] == "the dog runs"
    answer = submitted.original()
    assert answer.content == "queued the dog runs" and answer.flags & EPHEMERAL
    assert [r["type"] for r in fake.responses] == [9, 4]


async def test_rate_limited_followup_is_retried(connect):
    env = await connect()
    fake = env.fake
    fake.rate_limit_next("POST /api/v10/webhooks/", times=2, retry_after=0.05)
    interaction = await fake.slash_command("animate", PERSON, {"prompt": "p"},
                                           attachments={"image": fake.upload("a.png", PICTURE)})
    await fake.wait_for(lambda: "animate_done" in env.seen)
    assert len(fake.requests_to("POST /api/v10/webhooks/")) == 3
    assert interaction.followups()[0].attachments[0]["data"] == VIDEO  # the file was sent again on each try


async def test_upload_over_the_guild_limit_is_refused(connect):
    env = await connect(guild_upload_limit=4000)
    fake = env.fake
    interaction = await fake.slash_command("animate", PERSON, {"prompt": "p"},
                                           attachments={"image": fake.upload("a.png", PICTURE)})
    assert await fake.wait_for(lambda: env.seen.get("followup_error")) == (413, 40005)
    assert env.seen["filesize_limit"] == 4000 and interaction.followups() == []


async def test_edit_of_a_deleted_message_raises_not_found(connect):
    env = await connect()
    fake = env.fake
    interaction = await fake.slash_command("progress", PERSON)
    await fake.wait_for(lambda: "progress_id" in env.seen)
    assert interaction.original().id == env.seen["progress_id"]
    fake.delete_message(env.seen["progress_id"])
    env.gates["deleted"].set()
    await fake.wait_for(lambda: "channel_error" in env.seen)
    assert env.seen["webhook_error"] == env.seen["channel_error"] == 10008
    assert interaction.original().deleted and interaction.original().edits == 0


async def test_channel_reply_with_file_edit_and_delete(connect):
    env = await connect()
    fake, bot = env.fake, env.bot
    asked = fake.post_user_message(PERSON, "please")
    channel = bot.get_channel(fake.channel_id)
    target = await channel.fetch_message(asked.id)
    sent = await channel.send("done", file=discord.File(io.BytesIO(VIDEO), "v.mp4"), reference=target)
    stored = fake.messages[sent.id]
    assert stored.message_reference["message_id"] == str(asked.id) and sent.reference.message_id == asked.id
    assert stored.attachments[0]["data"] == VIDEO and sent.attachments[0].filename == "v.mp4"
    assert await sent.attachments[0].read() == VIDEO  # the fake serves what the bot uploaded
    kept = await sent.edit(content="done, again", attachments=[*sent.attachments,
                                                               discord.File(io.BytesIO(b"gif"), "p.gif")])
    assert [a.filename for a in kept.attachments] == ["v.mp4", "p.gif"]
    replaced = await kept.edit(attachments=[discord.File(io.BytesIO(b"new"), "n.gif")])
    assert [a["data"] for a in fake.messages[sent.id].attachments] == [b"new"] and len(replaced.attachments) == 1
    assert fake.messages[sent.id].edits == 2 and fake.messages[sent.id].history[0]["content"] == "done"
    fake.delete_message(asked.id)
    with pytest.raises(discord.HTTPException) as error:
        await channel.send("again", reference=target)
    assert error.value.status == 400 and error.value.code == 50035
    await sent.delete()
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(sent.id)


async def test_permissions_and_subcommands(connect):
    env = await connect()
    fake = env.fake
    fake.add_member(ADMIN, name="boss", permissions=MANAGE_GUILD)
    await (await fake.slash_command("whoami", ADMIN)).wait_response()
    await fake.wait_for(lambda: "manage_guild" in env.seen)
    assert env.seen["manage_guild"] and env.seen["role_manage_guild"] and env.seen["name"] == "boss"
    env.seen.clear()
    await (await fake.slash_command("whoami", PERSON)).wait_response()
    assert not env.seen["manage_guild"] and not env.seen["role_manage_guild"]
    answer = await fake.slash_command("admin", ADMIN, {"name": "max_seconds", "value": 30}, subcommand="set-limit")
    assert (await answer.wait_response())["data"]["content"] == "max_seconds=30"
    assert env.seen["limit"] == ("max_seconds", 30)
    with pytest.raises(LookupError):
        await fake.slash_command("admin", ADMIN, {"nope": 1}, subcommand="set-limit")


async def test_late_acknowledgement_is_unknown_interaction(connect):
    env = await connect()
    fake = env.fake
    fake.ack_deadline = 0.1
    interaction = await fake.slash_command("slow", PERSON)
    assert await fake.wait_for(lambda: env.seen.get("slow_error")) == 10062
    assert interaction.response is None


async def test_dm_interaction(connect):
    env = await connect(guild_upload_limit=100 * 1024 * 1024)
    fake = env.fake
    interaction = await fake.slash_command("ping", PERSON, guild=False)
    assert (await interaction.wait_response())["data"]["content"] == "pong"
    assert env.seen["dm_guild"] is None and env.seen["dm_limit"] == 10 * 1024 * 1024
    assert env.seen["dm_channel"] == "DMChannel"
    assert interaction.original().channel_id == fake.dm_channel_id(PERSON) and interaction.original().guild_id is None
    with pytest.raises(LookupError):
        await fake.slash_command("whoami", PERSON, guild=False)  # guild commands do not exist in DMs
    dm = await env.bot.create_dm(discord.Object(PERSON))
    sent = await dm.send("your video", file=discord.File(io.BytesIO(VIDEO), "v.mp4"))
    assert fake.messages[sent.id].channel_id == fake.dm_channel_id(PERSON)
    with pytest.raises(discord.HTTPException) as error:  # DMs allow 10 MiB whatever the guild allows
        await dm.send(file=discord.File(io.BytesIO(b"x" * (10 * 1024 * 1024 + 1)), "big.mp4"))
    assert error.value.status == 413 and error.value.code == 40005


async def test_file_and_view_in_the_first_response_then_component_defer_and_edits(connect):
    env = await connect()
    fake = env.fake
    interaction = await fake.slash_command("result", PERSON)
    response = await interaction.wait_response()
    message = interaction.original()
    assert response["type"] == 4 and message.attachments[0]["data"] == VIDEO
    custom_id = message.components[0]["components"][0]["custom_id"]  # discord.py made one up
    click = await fake.click(custom_id, PERSON, message)
    await fake.wait_for(lambda: env.seen.get("reroll_done"))
    assert click.response["type"] == 6 and click.original() is message  # the original of a click: its message
    assert message.content == "re-rolling" and message.components == [] and message.edits == 1
    note = click.followups()[0]
    assert note.ephemeral and note.content == "queued again, position 1" and note.edits == 1
    assert message.attachments[0]["data"] == VIDEO  # an edit without `attachments` keeps them


async def test_user_messages_arrive_without_content_and_the_bots_own_with_it(connect):
    env = await connect()
    fake = env.fake
    fake.post_user_message(PERSON, "secret words")
    await (await fake.slash_command("result", PERSON)).wait_response()
    seen = await fake.wait_for(lambda: len(env.seen.get("on_message", [])) >= 2 and env.seen["on_message"])
    assert seen == [(PERSON, ""), (fake.bot_user_id, "done")]  # no message content intent


async def test_events_follow_the_intents_asked_for(connect):
    env = await connect(intents=discord.Intents(guilds=True))
    fake = env.fake
    fake.post_user_message(PERSON, "hello")
    interaction = await fake.slash_command("result", PERSON)
    assert (await interaction.wait_response())["type"] == 4  # interactions come whatever the intents
    await asyncio.sleep(0.05)
    assert "on_message" not in env.seen  # no guild_messages intent: no MESSAGE_CREATE


async def test_rest_429_is_retried_and_a_restarted_bot_picks_up_old_messages(connect):
    env = await connect()
    fake = env.fake
    interaction = await fake.slash_command("animate", PERSON, {"prompt": "p"},
                                           attachments={"image": fake.upload("a.png", PICTURE)})
    await fake.wait_for(lambda: "animate_done" in env.seen)
    message = interaction.original()
    await connect.close(env)
    restarted = await connect(fake=fake)
    assert fake.commands[fake.guild_id]  # commands stay registered
    fake.rate_limit_next("PATCH /api/v10/channels/", times=1)
    channel = restarted.bot.get_channel(fake.channel_id)
    await channel.get_partial_message(message.id).edit(content="delivered", attachments=[])
    assert len(fake.requests_to("PATCH /api/v10/channels/")) == 2
    assert message.content == "delivered" and message.attachments == []
    click = await fake.click("cancel:7", PERSON, message)  # the persistent view answers on the new client
    assert (await click.wait_response())["type"] == 7 and restarted.seen["cancel_by"] == PERSON


async def test_expired_token_forbidden_channel_and_closed_dms(connect):
    env = await connect()
    fake, bot = env.fake, env.bot
    fake_interaction = await fake.slash_command("result", PERSON)
    await fake_interaction.wait_response()
    interaction = await fake.wait_for(lambda: env.seen.get("result_interaction"))
    fake.expire_token(fake_interaction)
    with pytest.raises(discord.HTTPException) as error:
        await interaction.edit_original_response(content="too late")
    assert (error.value.status, error.value.code) == (401, 50027)
    fake.forbid_channel(fake.channel_id)
    with pytest.raises(discord.Forbidden) as error:
        await bot.get_channel(fake.channel_id).send("hello")
    assert error.value.code == 50013
    fake.forbid_channel(fake.dm_channel_id(PERSON))
    with pytest.raises(discord.Forbidden) as error:
        await (await bot.fetch_user(PERSON)).send("hello")
    assert error.value.code == 50007


async def test_dynamic_item_button_and_modal_rules(connect):
    env = await connect()
    fake, bot = env.fake, env.bot
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(42))
    sent = await bot.get_channel(fake.channel_id).send("result", view=view)
    click = await fake.click("test:reroll:42", PERSON, fake.messages[sent.id])
    assert (await click.wait_response())["data"]["flags"] == EPHEMERAL and env.seen["reroll_job"] == 42
    posted = fake.post_user_message(PERSON, attachments=[fake.upload("dog.png", PICTURE)])
    await (await fake.message_command("Animate this image", PERSON, posted)).wait_response()
    with pytest.raises(ValueError):
        await fake.submit_modal(None, PERSON, {"prompt": ""})  # required
    with pytest.raises(ValueError):
        await fake.submit_modal(None, PERSON, {"prompt": "x" * 201})  # over max_length
    submitted = await fake.submit_modal(None, PERSON, {"prompt": "a dog"})  # None: the last modal shown
    assert (await submitted.wait_response())["data"]["content"] == "queued a dog"


async def test_gateway_reconnect_resumes_and_replays_missed_events(connect):
    env = await connect()
    fake = env.fake
    first_identify = fake.identify
    await fake.drop_connection()
    fake.post_user_message(PERSON, "while away")  # dispatched while the client is disconnected
    await fake.wait_ready()
    assert fake.identify is first_identify  # resumed, not identified again
    assert await fake.wait_for(lambda: env.seen.get("on_message")) == [(PERSON, "")]
    interaction = await fake.slash_command("ping", PERSON)
    assert (await interaction.wait_response())["data"]["content"] == "pong"


async def test_a_request_the_fake_cannot_handle_is_reported(connect):
    env = await connect()
    fake = env.fake
    with pytest.raises(discord.HTTPException) as error:  # a 400 at once, not 500s that discord.py retries
        await env.bot.http.request(discord.http.Route("POST", "/users/@me/channels"), json={})
    assert error.value.status == 400 and "KeyError" in fake.errors[0]
    fake.errors.clear()  # else stop() raises at teardown, which is the point of recording them
