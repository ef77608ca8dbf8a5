"""`framepack-bot`: the command line. Heavy imports wait until a command needs them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from storage.log_setup import configure_logging
from storage.settings import DEVICE_NAME, SettingsError, get_settings

EXIT_BAD_INPUT = 2
EXIT_NO_MODELS = 3


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", type=Path, default=None,
        help="folder with the weights in the Hub layout (default: FRAMEPACK_MODELS_DIR, else the HF cache)",
    )


def _add_lora_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="NAME_OR_PATH:STRENGTH",
                        help="a HunyuanVideo LoRA: NAME (NAME.safetensors in LORA_DIR) or a file's path, with a "
                             "strength (default 1); repeatable, up to 3")


def _chosen_loras(specs: list[str], settings) -> tuple:
    """The --lora options as the job's LoRA choices (files found, hashed), or an InputError."""
    from engine.lora import MAX_LORAS, resolve_lora
    from storage.inputs import InputError

    if len(specs) > MAX_LORAS:
        raise InputError(f"--lora can be given at most {MAX_LORAS} times, not {len(specs)}.")
    return tuple(resolve_lora(spec, settings.lora_dir) for spec in specs)


def _add_direction_args(animate: argparse.ArgumentParser) -> None:
    """Where the video goes: an end frame, keyframes, a loop, and true CFG with a negative prompt."""
    animate.add_argument("--end-image", type=Path, default=None,
                         help="the picture the video ends on (original variant), cropped like the start")
    animate.add_argument("--end-strength", type=float, default=1.0,
                         help="how strongly the end picture pulls, above 0 up to 1 (default 1)")
    animate.add_argument("--keyframe", action="append", default=[], metavar="SECONDS:PATH",
                         help="a picture to pass through at that second (original variant; repeatable)")
    animate.add_argument("--loop", action="store_true", help="end on the start picture: a seamless loop")
    animate.add_argument("--negative", default="", help="negative prompt (used with --cfg above 1)")
    animate.add_argument("--cfg", type=float, default=1.0,
                         help="true classifier-free guidance, 1 (off) to 32; above 1 each step costs twice")
    animate.add_argument("--cfg-rescale", type=float, default=0.0, help="CFG rescale, 0 to 1")


def _load_direction_pictures(args: argparse.Namespace, settings):
    """The end picture and (seconds, picture) keyframes the options name, through the start's checks."""
    from storage.inputs import InputError, load_image

    def load(path: Path, what: str):
        try:
            return load_image(path, settings.max_image_pixels, settings.max_image_bytes)
        except InputError as error:
            raise InputError(f"{what}: {error}") from None

    keyframes = []
    for spec in args.keyframe:
        seconds, sep, path = spec.partition(":")
        try:
            at = float(seconds.strip().removesuffix("s"))
        except ValueError:
            at = None
        if not sep or at is None or not path:
            raise InputError(f"--keyframe takes SECONDS:PATH, e.g. 2.5:middle.png, not {spec!r}.")
        keyframes.append((at, load(Path(path), f"The keyframe at {at:g}s")))
    end = load(args.end_image, "The end picture") if args.end_image is not None else None
    return end, keyframes


def _parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="framepack-bot", description="Animate a picture with FramePack.")
    # On each command, after its name: `framepack-bot animate -v ...` is how the bot's own entry point passes it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    commands = parser.add_subparsers(dest="command", required=True)

    animate = commands.add_parser("animate", parents=[common], help="render one video locally, no chat")
    animate.add_argument("image", type=Path)
    animate.add_argument("prompt")
    animate.add_argument("--seconds", type=float, default=settings.default_seconds)
    animate.add_argument("--variant", default="original", help="original (inverted anti-drifting) or f1")
    animate.add_argument("--seed", type=int, default=settings.default_seed)
    animate.add_argument("--steps", type=int, default=settings.default_steps)
    animate.add_argument("--crf", type=int, default=settings.video_crf, help="x264 quality, 0 lossless, 16 default")
    animate.add_argument("--out", type=Path, default=Path("video.mp4"))
    animate.add_argument("--device", default=settings.engine_device, help="cuda, cuda:N or cpu")
    animate.add_argument("--resolution", type=int, default=640, help=argparse.SUPPRESS)
    animate.add_argument("--memory-mode", choices=["auto", "high", "low"], default=settings.engine_memory_mode,
                         help="high keeps every model on the GPU (~61 GB); low streams from RAM (~6 GB GPU)")
    animate.add_argument("--teacache", type=float, default=settings.engine_teacache,
                         help="TeaCache threshold: 0 off, 0.15 about 2x faster with visible changes")
    animate.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=settings.engine_fp8,
                         help="FP8 transformer linears (Ada/Hopper GPUs): faster, slightly different video")
    animate.add_argument("--compile", action=argparse.BooleanOptionalAction, default=settings.engine_compile,
                         help="compile the transformer blocks on CUDA (a minute once, then faster)")
    _add_direction_args(animate)
    _add_lora_arg(animate)
    _add_model_args(animate)

    _add_extend_command(commands, settings, common)

    commands.add_parser("doctor", parents=[common],
                        help="can the bot run here, with which memory plan, how fast; what to change")

    download = commands.add_parser("download", parents=[common], help="fetch all model weights ahead of time")
    download.add_argument("--variant", action="append", help="original and/or f1 (default: both)")
    _add_model_args(download)
    return parser


def _add_extend_command(commands, settings, common: argparse.ArgumentParser) -> None:
    extend = commands.add_parser("extend", parents=[common], help="continue a video by N seconds with the F1 sampler")
    extend.add_argument("video", type=Path, help="an MP4 or WebM, made by the bot or not")
    extend.add_argument("prompt", help="what happens next")
    extend.add_argument("--seconds", type=float, default=settings.default_seconds, help="seconds to add")
    extend.add_argument("--from-work", type=Path, default=None, metavar="DIR",
                        help="the work folder of the render or extension that made VIDEO (OUT_work): continue "
                             "from its kept latents, no frame re-encoded")
    extend.add_argument("--seed", type=int, default=None,
                        help="default: with --from-work the video's own seed (its noise stream carries on), "
                             f"else {settings.default_seed}")
    extend.add_argument("--steps", type=int, default=settings.default_steps)
    extend.add_argument("--crf", type=int, default=settings.video_crf, help="x264 quality, 0 lossless, 16 default")
    extend.add_argument("--out", type=Path, default=None, help="default: VIDEO_extended.mp4 beside VIDEO")
    extend.add_argument("--device", default=settings.engine_device, help="cuda, cuda:N or cpu")
    extend.add_argument("--resolution", type=int, default=640, help=argparse.SUPPRESS)
    extend.add_argument("--memory-mode", choices=["auto", "high", "low"], default=settings.engine_memory_mode,
                        help="high keeps every model on the GPU (~61 GB); low streams from RAM (~6 GB GPU)")
    _add_lora_arg(extend)
    _add_model_args(extend)


def _check_out_and_device(args: argparse.Namespace) -> None:
    """Before the models load: these would otherwise fail minutes later, with a traceback."""
    from storage.inputs import InputError

    if args.out.is_dir():
        raise InputError("--out names a folder; give the video's file name instead, e.g. video.mp4.")
    if args.device is not None and not DEVICE_NAME.fullmatch(args.device):
        raise InputError(f"--device takes cpu, cuda or cuda:N (N a GPU number), not {args.device!r}.")


def _animate(args: argparse.Namespace) -> int:

    from engine.made_with import made_with, stamp
    from engine.render import RenderRequest, check_guides, render
    from storage.inputs import InputError, check_prompt, load_image

    settings = get_settings()
    try:
        request = RenderRequest(
            prompt=check_prompt(args.prompt, settings.max_prompt_chars), seconds=args.seconds, variant=args.variant,
            seed=args.seed, steps=args.steps, crf=args.crf, resolution=args.resolution, teacache=args.teacache,
            negative_prompt=args.negative, cfg=args.cfg, cfg_rescale=args.cfg_rescale,
            end_strength=args.end_strength, loop=args.loop, loras=_chosen_loras(args.lora, settings),
        ).checked(settings.max_prompt_chars, settings.max_seconds)
        _check_out_and_device(args)
        image = load_image(args.image, settings.max_image_pixels, settings.max_image_bytes)
        end_image, keyframes = _load_direction_pictures(args, settings)
        check_guides(request, end_image is not None, [at for at, _ in keyframes])
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    models = _load_models_or_exit(request.variant, args, settings, args.memory_mode, args.compile, args.fp8)
    if isinstance(models, int):
        return models

    out = args.out
    work_dir = out.with_name(out.stem + "_work")
    bar, on_step = _progress_bar(request)

    def on_section(event) -> None:
        preview = out.with_name(f"{out.stem}_section{event.section:02d}.gif")
        preview.write_bytes(event.gif.read_bytes())

    try:
        result = render(models, image, request, work_dir, out, on_step=on_step, on_section=on_section,
                        end_image=end_image, keyframes=keyframes)
    except InputError as error:  # a LoRA that does not fit the transformer
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _stopped(bar, work_dir)
    bar.close()
    stamp(result.video, made_with(request, end_picture=end_image is not None, keyframes=[at for at, _ in keyframes]))
    print(
        f"wrote {result.video}: {result.frames} frames, {result.width}x{result.height}, "
        f"{result.seconds:.2f} s at 30 fps (seed {request.seed}, {request.variant.value})"
    )
    return 0


def _extend(args: argparse.Namespace) -> int:

    from engine.continuation import load as load_continuation
    from engine.extend import VideoLimits, extend
    from engine.made_with import extension_made_with, stamp
    from engine.render import RenderRequest
    from storage.inputs import InputError, check_prompt
    from storage.uploaded_videos import check_video

    settings = get_settings()
    args.out = args.out or args.video.with_name(args.video.stem + "_extended.mp4")
    try:
        kept = _kept_latents(args.from_work, load_continuation)
        seed = args.seed if args.seed is not None else kept.seed if kept is not None and kept.seed is not None \
            else settings.default_seed
        request = RenderRequest(
            prompt=check_prompt(args.prompt, settings.max_prompt_chars), seconds=args.seconds, variant="f1",
            seed=seed, steps=args.steps, crf=args.crf, resolution=args.resolution,
            loras=_chosen_loras(args.lora, settings),
        ).checked(settings.max_prompt_chars, settings.max_seconds)
        _check_out_and_device(args)
        if kept is None:  # before minutes of loading: a file that is no video, or too long, is refused now
            check_video(args.video, VideoLimits.from_settings(settings))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    models = _load_models_or_exit("f1", args, settings, args.memory_mode, settings.engine_compile, settings.engine_fp8)
    if isinstance(models, int):
        return models

    out = args.out
    work_dir = out.with_name(out.stem + "_work")
    bar, on_step = _progress_bar(request)

    try:
        result = extend(models, args.from_work or args.video, request, work_dir, out, on_step=on_step,
                        limits=VideoLimits.from_settings(settings), source_name=args.video.name)
    except InputError as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _stopped(bar, work_dir)
    bar.close()
    stamp(result.video, extension_made_with(request, {**_source_settings(args.video), **result.extends}))
    print(f"wrote {result.video}: {result.frames} frames ({result.source_frames} from {args.video.name}), "
          f"{result.width}x{result.height}, {result.seconds:.2f} s at 30 fps (seed {request.seed}, f1); "
          f"extend it again with --from-work {work_dir}")
    return 0


def _load_models_or_exit(variant, args: argparse.Namespace, settings, memory_mode, compile_blocks: bool, fp8: bool):
    """The models with the engine options of the settings and the command's flags, or the exit code that
    says why not (printed)."""
    from engine.engine_options import EngineOptions
    from engine.models import DeviceUnavailable, ModelsNotFound, load_models

    try:
        options = EngineOptions(memory_mode=memory_mode, compile=compile_blocks, attention=settings.engine_attention,
                                fp8=fp8, stream_slots=settings.engine_stream_slots, vram_gb=settings.engine_vram_gb,
                                ram_gb=settings.engine_ram_gb, cache_dir=Path(settings.data_dir) / "cache")
        return load_models(variant, args.device, args.models or settings.framepack_models_dir,
                           settings.framepack_auto_download, options)
    except (ModelsNotFound, DeviceUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_MODELS
    except ValueError as error:  # an engine option this machine cannot honour
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _stopped(bar, work_dir: Path) -> int:
    """Ctrl-C: the work folder keeps the finished sections, so the same command resumes."""
    bar.close()
    print(f"stopped. Run the same command again to resume from the last finished section ({work_dir}).",
          file=sys.stderr)
    return 130


def _progress_bar(request):
    """A terminal progress bar over the job's steps and the step callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=request.sections * request.steps, unit="step", dynamic_ncols=True)

    def on_step(event) -> None:
        bar.set_description(f"section {event.section}/{event.sections}")
        bar.set_postfix_str(f"step {event.step}/{event.steps}")
        bar.update(1)

    return bar, on_step


def _kept_latents(folder: Path | None, load):
    """The continuation kept in --from-work's folder, or an InputError that says what is wrong with it."""
    from storage.inputs import InputError

    if folder is None:
        return None
    if not folder.is_dir():
        raise InputError(f"--from-work names no folder: {folder}")
    kept = load(folder)
    if kept is None:
        raise InputError(f"{folder} holds no kept latents (continuation.pt); leave out --from-work to extend the "
                         "video file itself.")
    return kept


def _source_settings(video: Path) -> dict:
    """The prompt and seed a video of ours was made with (its metadata), for the extension's own."""
    from storage.video_metadata import NotAnMp4, read_made_with

    try:
        made = read_made_with(video) if video.is_file() else None
    except (NotAnMp4, OSError):
        made = None
    return {"prompt": made.prompt, "seed": made.seed} if made is not None else {}


def _download(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from engine.models import download
    from engine.sections import Variant

    try:
        variants = [Variant.parse(v) for v in (args.variant or ["original", "f1"])]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        roots = download(variants, args.models or get_settings().framepack_models_dir)
    except (HfHubHTTPError, OSError) as error:
        print(f"error: the download failed: {error}", file=sys.stderr)
        return EXIT_NO_MODELS
    for repo, root in roots.items():
        print(f"{repo}: {root}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from engine.doctor import diagnose

    report = diagnose(get_settings())
    print(report.text())
    return 1 if report.problems else 0


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_logging(get_settings(), fmt="%(asctime)s %(name)s: %(message)s",
                      level=logging.INFO if args.verbose else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handlers = {"animate": _animate, "extend": _extend, "download": _download, "doctor": _doctor}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
