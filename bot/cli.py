"""`framepack-bot`: serve the bot, or hand `animate` and `download` to the engine's own command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

ENGINE_COMMANDS = ("animate", "extend", "download", "doctor")
ROLES = ("serve", "worker", "frontends")  # bot/serve.py's ROLES


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ENGINE_COMMANDS:
        # A process of its own: this side never imports the engine (or torch).
        os.execv(sys.executable, [sys.executable, "-m", "engine.cli", *argv])

    parser = argparse.ArgumentParser(prog="framepack-bot", description="Animate pictures with FramePack.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the chat bot(s) and one engine worker per GPU")
    commands.add_parser("worker", help="a GPU host of several: one engine worker per GPU, no chat frontends")
    commands.add_parser("frontends", help="a host without a GPU: the chat frontends and their deliveries only")
    commands.add_parser("animate", help="render one video locally (framepack-bot animate --help)")
    commands.add_parser("extend", help="continue a video locally (framepack-bot extend --help)")
    commands.add_parser("download", help="fetch the model weights (framepack-bot download --help)")
    commands.add_parser("doctor", help="check this machine: GPUs, memory, weights, the memory plan, the speed")
    args = parser.parse_args(argv)

    if args.command in ROLES:
        from bot.serve import serve
        from storage.log_setup import configure_logging
        from storage.settings import SettingsError, get_settings

        try:
            settings = get_settings()
        except SettingsError as error:
            print(error, file=sys.stderr)
            return 2
        configure_logging(settings)
        return asyncio.run(serve(settings, args.command))
    return 2


if __name__ == "__main__":
    sys.exit(main())
