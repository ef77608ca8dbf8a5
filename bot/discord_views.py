"""Discord buttons and the prompt modal.

The buttons are DynamicItems: their custom id carries the job number, so a click is understood by
any later run of the bot, not only by the process that sent the message.
"""

from __future__ import annotations

import re
from typing import Protocol

import discord


class ExtendHandlers(Protocol):
    """bot/discord_extend.py's DiscordExtensions, as the Extend button and form call it."""

    async def on_button(self, interaction: discord.Interaction, job_id: int) -> None: ...
    async def on_modal(self, interaction: discord.Interaction, job_id: int, seconds: str, prompt: str) -> None: ...


class ComponentHandlers(Protocol):
    """bot/discord_frontend.py's DiscordBot, as the buttons and forms call it."""

    extensions: ExtendHandlers

    async def on_component_error(self, interaction: discord.Interaction, error: Exception) -> None: ...
    async def on_cancel_button(self, interaction: discord.Interaction, job_id: int) -> None: ...
    async def on_reroll_button(self, interaction: discord.Interaction, job_id: int) -> None: ...
    async def on_prompt_modal(self, interaction: discord.Interaction, attachment: discord.Attachment,
                              prompt: str, seconds: str) -> None: ...


def _frontend(interaction: discord.Interaction) -> ComponentHandlers:
    return interaction.client.framepack  # set by FramePackClient


async def _answered(interaction: discord.Interaction, handler) -> None:
    """Run a button's or modal's handler; an error in it still gets the person an answer."""
    try:
        await handler
    except Exception as error:
        await _frontend(interaction).on_component_error(interaction, error)


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"framepack:cancel:(?P<job>\d+)"):
    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger,
                                           custom_id=f"framepack:cancel:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item, match: re.Match[str]) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _answered(interaction, _frontend(interaction).on_cancel_button(interaction, self.job_id))


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"framepack:reroll:(?P<job>\d+)"):
    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label="Re-roll", style=discord.ButtonStyle.primary, emoji="\N{DIE FACE-5}",
                                           custom_id=f"framepack:reroll:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item, match: re.Match[str]) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _answered(interaction, _frontend(interaction).on_reroll_button(interaction, self.job_id))


class ExtendButton(discord.ui.DynamicItem[discord.ui.Button], template=r"framepack:extend:(?P<job>\d+)"):
    """Under a delivered video: asks for the seconds and a prompt, then queues the video's continuation."""

    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label="Extend", style=discord.ButtonStyle.secondary,
                                           emoji="\N{BLACK RIGHT-POINTING DOUBLE TRIANGLE}",
                                           custom_id=f"framepack:extend:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item, match: re.Match[str]) -> ExtendButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _answered(interaction, _frontend(interaction).extensions.on_button(interaction, self.job_id))


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def reroll_view(job_id: int) -> discord.ui.View:
    """The buttons under a delivered video: Re-roll and Extend."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(ExtendButton(job_id))
    return view


def animate_again_view(job_id: int) -> discord.ui.View:
    """A re-roll of the job a video came from, shown by "Video info": the same button, named for what it does."""
    button = RerollButton(job_id)
    button.item.label = "Animate again"
    view = discord.ui.View(timeout=None)
    view.add_item(button)
    return view


class PromptModal(discord.ui.Modal, title="Animate this image"):
    """Asked by the "Animate this image" message command: the picture is the message's."""

    prompt = discord.ui.TextInput(label="Prompt", style=discord.TextStyle.paragraph, custom_id="prompt",
                                  placeholder="The girl dances gracefully, with clear movements", max_length=4000)
    seconds = discord.ui.TextInput(label="Seconds (optional)", required=False, max_length=6, placeholder="5",
                                   custom_id="seconds")

    def __init__(self, attachment: discord.Attachment):
        super().__init__(timeout=15 * 60)  # the default custom id is random: discord.py keys open modals by it
        self.attachment = attachment

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _answered(interaction, _frontend(interaction).on_prompt_modal(interaction, self.attachment,
                                                                            self.prompt.value, self.seconds.value))


class ExtendModal(discord.ui.Modal, title="Extend this video"):
    """Asked by the Extend button: how many seconds to add, and what happens next (the video's own prompt when
    left empty)."""

    seconds = discord.ui.TextInput(label="Seconds to add", required=False, max_length=6, placeholder="5",
                                   custom_id="seconds")
    prompt = discord.ui.TextInput(label="What happens next (optional)", style=discord.TextStyle.paragraph,
                                  required=False, custom_id="prompt", max_length=4000,
                                  placeholder="Empty: the video's own prompt")

    def __init__(self, job_id: int):
        super().__init__(timeout=15 * 60)
        self.job_id = job_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _answered(interaction, _frontend(interaction).extensions.on_modal(
            interaction, self.job_id, self.seconds.value, self.prompt.value))
