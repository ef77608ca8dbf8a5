"""Loading the five FramePack components (SPEC.md section 1) from the Hugging Face Hub or a local folder.

A local folder has the Hub's layout, one folder per repository id:

    MODELS_DIR/hunyuanvideo-community/HunyuanVideo/{text_encoder,tokenizer,text_encoder_2,tokenizer_2,vae}
    MODELS_DIR/lllyasviel/flux_redux_bfl/{image_encoder,feature_extractor}
    MODELS_DIR/lllyasviel/FramePackI2V_HY/                  (transformer, original variant)
    MODELS_DIR/lllyasviel/FramePack_F1_I2V_HY_20250503/     (transformer, F1 variant)

`huggingface-cli download REPO --local-dir MODELS_DIR/REPO` fills one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from engine.denoiser import use_fp32_output_projection
from engine.memory_modes import Placement
from engine.memory_plan import MemoryPlan, ModelSizes, load_peak, sizes_from_folders
from engine.prompt_cache import PromptCache, prompt_cache_for
from engine.sections import Variant

if TYPE_CHECKING:
    from engine.engine_options import EngineOptions

log = logging.getLogger(__name__)

HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = {
    Variant.ORIGINAL: "lllyasviel/FramePackI2V_HY",
    Variant.F1: "lllyasviel/FramePack_F1_I2V_HY_20250503",
}


@dataclass(frozen=True)
class Part:
    """One folder of a repository that the engine reads, and the file that proves it is there."""

    repo: str
    subfolder: str  # "" for the repository root
    marker: str


ENCODER_PARTS = (
    Part(HUNYUAN_REPO, "text_encoder", "config.json"),
    Part(HUNYUAN_REPO, "tokenizer", "tokenizer_config.json"),
    Part(HUNYUAN_REPO, "text_encoder_2", "config.json"),
    Part(HUNYUAN_REPO, "tokenizer_2", "tokenizer_config.json"),
    Part(HUNYUAN_REPO, "vae", "config.json"),
    Part(REDUX_REPO, "image_encoder", "config.json"),
    Part(REDUX_REPO, "feature_extractor", "preprocessor_config.json"),
)


def transformer_part(variant: Variant) -> Part:
    return Part(TRANSFORMER_REPOS[variant], "", "config.json")


def parts_for(variants: list[Variant]) -> list[Part]:
    return [*ENCODER_PARTS, *(transformer_part(v) for v in variants)]


class ModelsNotFound(RuntimeError):
    """The weights are not where they were looked for; the message says what to do."""


class DeviceUnavailable(RuntimeError):
    pass


def resolve_device(requested: str | None) -> torch.device:
    """CUDA when present; the CPU only when asked for, since the full model takes hours there."""
    if requested is None or requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        raise DeviceUnavailable(
            "No CUDA GPU is visible. FramePack's 13B transformer needs an NVIDIA GPU (6 GB or more). "
            "Pass --device cpu (or ENGINE_DEVICE=cpu) to run on the CPU anyway: expect hours per second of video."
        )
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"--device {requested} was asked for, but no CUDA GPU is visible.")
    return device


@dataclass(frozen=True)
class Dtypes:
    text: torch.dtype
    vae: torch.dtype
    image: torch.dtype
    transformer: torch.dtype


# SPEC.md: encoders and VAE in fp16, the transformer in bf16, as the official demos load them.
OFFICIAL_DTYPES = Dtypes(torch.float16, torch.float16, torch.float16, torch.bfloat16)


def dtypes_for(device: torch.device) -> Dtypes:
    """The official dtypes on CUDA. CPUs keep the encoders and VAE in fp32: their fp16 convolutions are about
    17x slower than fp32 ones (a tiny VAE's decode at 640x608 took 355 s against 21 s on 2 cores)."""
    if device.type == "cuda":
        return OFFICIAL_DTYPES
    return Dtypes(torch.float32, torch.float32, torch.float32, torch.bfloat16)


def load_llama_tokenizer(root: Path, subfolder: str = "tokenizer"):
    """HunyuanVideo's Llama 3 tokenizer as the official demos see it.

    The fast tokenizer class reads the byte-level tokenizer.json as saved, whatever class the folder's config
    names (the folder says LlamaTokenizer, which some transformers 5 releases' AutoTokenizer rebuilds with
    other splits: 169 tokens for the template's prefix under 5.17). The demos' LlamaTokenizerFast puts BOS
    before the text and no EOS after it, whatever the file's own post-processor says, so that is set here
    too; then the template's prefix must be the official crop start.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from engine.text_encoding import check_llama_tokenizer

    tokenizer = PreTrainedTokenizerFast.from_pretrained(root, subfolder=subfolder)
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    check_llama_tokenizer(tokenizer)
    return tokenizer


def siglip_processor_class():
    """The PIL-backed SigLIP processor: the official demos' resize and rescale. transformers 5 picks a
    torchvision-backed one when torchvision is installed, whose bicubic resize gives other pixels."""
    import transformers

    return getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor


def _missing_message(parts: list[Part], where: str, hint: str) -> str:
    listed = "\n".join(f"  - {p.repo}/{p.subfolder}".rstrip("/") for p in parts)
    return f"FramePack weights are missing from {where}:\n{listed}\n{hint}"


def _locate_local(models_dir: Path, parts: list[Part]) -> dict[str, Path]:
    missing = [p for p in parts if not (models_dir / p.repo / p.subfolder / p.marker).is_file()]
    if missing:
        raise ModelsNotFound(
            _missing_message(
                missing,
                f"the folder {models_dir}",
                f"Each repository goes in a folder named after its id, as the Hub lays it out, e.g. "
                f"`huggingface-cli download {missing[0].repo} --local-dir {models_dir / missing[0].repo}`; "
                f"or leave --models unset to use the Hugging Face cache.",
            )
        )
    return {p.repo: models_dir / p.repo for p in parts}


def _snapshot(repo: str, parts: list[Part], allow_download: bool) -> Path | None:
    """The cached (or freshly downloaded) snapshot of `repo`, or None when it is not in the cache."""
    offline = hf_constants.HF_HUB_OFFLINE or not allow_download
    try:
        return Path(snapshot_download(repo, allow_patterns=_patterns(parts), local_files_only=offline))
    except LocalEntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError) as error:
        raise ModelsNotFound(
            f"Could not download {repo} from the Hugging Face Hub: {error}\n"
            "Check the network (or HF_TOKEN), then run `framepack-bot download`."
        ) from None


def _by_repo(parts: list[Part]) -> dict[str, list[Part]]:
    grouped: dict[str, list[Part]] = {}
    for part in parts:
        grouped.setdefault(part.repo, []).append(part)
    return grouped


def _patterns(parts: list[Part]) -> list[str]:
    """Only the folders the engine reads: HunyuanVideo's own 25 GB transformer is never fetched."""
    return [f"{p.subfolder}/*" if p.subfolder else "*" for p in parts]


def _locate_hub(parts: list[Part], allow_download: bool) -> dict[str, Path]:
    roots, missing = {}, []
    for repo, repo_parts in _by_repo(parts).items():
        root = _snapshot(repo, repo_parts, allow_download)
        if root is None:
            missing += repo_parts
            continue
        missing += [p for p in repo_parts if not (root / p.subfolder / p.marker).is_file()]
        roots[repo] = root
    if missing:
        raise ModelsNotFound(
            _missing_message(
                missing,
                f"the Hugging Face cache ({hf_constants.HF_HUB_CACHE})",
                "Run `framepack-bot download` while online to fetch them once, "
                "or point --models / FRAMEPACK_MODELS_DIR at a folder that has them.",
            )
        )
    return roots


def locate(parts: list[Part], models_dir: Path | None, allow_download: bool) -> dict[str, Path]:
    """Map each repository id to a local folder holding the requested parts; name everything missing."""
    if models_dir is not None:
        return _locate_local(Path(models_dir), parts)
    return _locate_hub(parts, allow_download)


def download(variants: list[Variant], models_dir: Path | None = None) -> dict[str, Path]:
    """Fetch every weight the engine needs (huggingface_hub shows a progress bar per file)."""
    roots = {}
    for repo, parts in _by_repo(parts_for(variants)).items():
        patterns = _patterns(parts)
        local_dir = Path(models_dir) / repo if models_dir is not None else None
        log.info("downloading %s (%s)", repo, ", ".join(p.subfolder or "root" for p in parts))
        roots[repo] = Path(snapshot_download(repo, allow_patterns=patterns, local_dir=local_dir))
    return roots


@dataclass
class Encoders:
    """Everything but the transformer: text, image and VAE, shared by both variants."""

    tokenizer: object
    text_encoder: torch.nn.Module
    tokenizer_2: object
    text_encoder_2: torch.nn.Module
    feature_extractor: object
    image_encoder: torch.nn.Module
    vae: torch.nn.Module


@dataclass
class FramePackModels:
    encoders: Encoders
    transformer: torch.nn.Module
    variant: Variant
    device: torch.device
    placement: Placement = field(default_factory=Placement)  # where each model sits in each phase of a job
    plan: MemoryPlan | None = None
    prompt_cache: PromptCache | None = None  # prompt embeddings on disk: repeated prompts skip the text encoders


def _load_failure(error: Exception, what: str, root: Path) -> ModelsNotFound:
    return ModelsNotFound(
        f"Could not load {what} from {root}: {error}\n"
        "The folder is incomplete or not laid out like the Hub repository; "
        "run `framepack-bot download` again or fix --models."
    )


def load_encoders(
    device: torch.device, models_dir: Path | None = None, allow_download: bool = True,
    place: torch.device | None = None, dtypes: Dtypes | None = None, llama_streams: bool = False,
) -> Encoders:
    """`device` decides the dtypes unless `dtypes` is given; `place` (default `device`) is where the weights
    go: the CPU in low-VRAM mode. With `llama_streams`, Llama's layers stay as the checkpoint holds them
    (mapped lazily, its dtype): their streamer casts them one at a time."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, SiglipVisionModel

    roots = locate(list(ENCODER_PARTS), models_dir, allow_download)
    hunyuan, redux = roots[HUNYUAN_REPO], roots[REDUX_REPO]
    dtypes = dtypes or dtypes_for(device)
    try:
        encoders = Encoders(
            tokenizer=load_llama_tokenizer(hunyuan),
            text_encoder=LlamaModel.from_pretrained(hunyuan, subfolder="text_encoder", dtype=dtypes.text),
            tokenizer_2=AutoTokenizer.from_pretrained(hunyuan, subfolder="tokenizer_2"),
            text_encoder_2=CLIPTextModel.from_pretrained(hunyuan, subfolder="text_encoder_2", dtype=dtypes.text),
            feature_extractor=siglip_processor_class().from_pretrained(redux, subfolder="feature_extractor"),
            image_encoder=SiglipVisionModel.from_pretrained(redux, subfolder="image_encoder", dtype=dtypes.image),
            vae=AutoencoderKLHunyuanVideo.from_pretrained(hunyuan, subfolder="vae", torch_dtype=dtypes.vae),
        )
    except (OSError, ValueError) as error:
        raise _load_failure(error, "the text, image and VAE models", hunyuan.parent) from None
    # `.to(dtype)` as the demos do after loading: it also casts buffers that from_pretrained keeps in fp32,
    # Llama's rotary inv_freq among them, which moves its embeddings by up to 3e-5 (found by the golden tests).
    # Moved first, then cast: a model bound for the GPU is cast there, not copied whole in RAM.
    for module, dtype in ((encoders.text_encoder, dtypes.text), (encoders.text_encoder_2, dtypes.text),
                          (encoders.image_encoder, dtypes.image), (encoders.vae, dtypes.vae)):
        module.requires_grad_(False).eval().to(place or device)
        if module is encoders.text_encoder and llama_streams:
            for child in module.children():
                if child is not module.layers:
                    _cast_like_the_demos(child, dtype)
        else:
            _cast_like_the_demos(module, dtype)
    encoders.text_encoder._framepack_source = weights_identity(hunyuan / "text_encoder", dtypes.text)
    encoders.text_encoder_2._framepack_source = weights_identity(hunyuan / "text_encoder_2", dtypes.text)
    return encoders


def weights_identity(folder: Path, dtype: torch.dtype) -> str:
    """Which weights these are (folder, files' sizes and times, dtype): names the mapped files and caches."""
    files = sorted(Path(folder).glob("*.safetensors"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return f"{Path(folder).resolve()}|{stamp}|{dtype}"


def _cast_like_the_demos(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(dtype)`, skipped when nothing would change (diffusers warns on every cast)."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        module.to(dtype)
    return module


def load_transformer(
    variant: Variant, device: torch.device, models_dir: Path | None = None, allow_download: bool = True,
    place: torch.device | None = None, dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    part = transformer_part(variant)
    root = locate([part], models_dir, allow_download)[part.repo]
    try:
        transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(
            root, torch_dtype=dtype or dtypes_for(device).transformer
        )
    except (OSError, ValueError) as error:
        raise _load_failure(error, f"the {variant.value} transformer", root) from None
    transformer.requires_grad_(False).eval().to(place or device)
    _cast_like_the_demos(transformer, dtype or dtypes_for(device).transformer)
    use_fp32_output_projection(transformer)
    transformer._framepack_source = weights_identity(root, dtype or dtypes_for(device).transformer)
    return transformer


def load_models(
    variant: Variant | str,
    device: str | torch.device | None = None,
    models_dir: Path | None = None,
    allow_download: bool = True,
    options: EngineOptions | None = None,
    dtypes: Dtypes | None = None,
) -> FramePackModels:
    """Without `options`: every model on the device, stock forward. With them: the memory plan and speed
    options of engine/engine_options.py (what the plan keeps off the GPU is loaded into RAM).
    `dtypes` overrides the device's (OFFICIAL_DTYPES on a CPU: the golden tests)."""
    from engine.engine_options import placement_for

    variant = Variant.parse(variant)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    # Check every folder first, so a missing transformer is reported before minutes of encoder loading.
    locate(parts_for([variant]), models_dir, allow_download)
    if options is None:
        encoders = load_encoders(device, models_dir, allow_download, dtypes=dtypes)
        transformer = load_transformer(variant, device, models_dir, allow_download,
                                       dtype=dtypes.transformer if dtypes else None)
        return FramePackModels(encoders=encoders, transformer=transformer, variant=variant, device=device)
    plan = plan_loading(variant, device, options, models_dir, allow_download)
    encoders = load_prepared_encoders(device, options, plan, models_dir, allow_download)
    transformer = load_prepared_transformer(variant, device, options, plan, models_dir, allow_download)
    return FramePackModels(encoders, transformer, variant, device, placement_for(encoders, transformer, device, plan),
                           plan, prompt_cache_for(options.cache_dir, encoders))


def plan_loading(variant: Variant, device: torch.device, options: EngineOptions, models_dir: Path | None = None,
                 allow_download: bool = True) -> MemoryPlan:
    """The memory plan from the weights' sizes (nothing loaded yet); logged in one line."""
    from engine.engine_options import choose_plan

    sizes = checkpoint_sizes(variant, device, options, models_dir, allow_download)
    plan = choose_plan(options, device, sizes)
    log.info("%s; loading peaks near %.1f GiB of private RAM", plan.describe(sizes), load_peak(plan, sizes) / 2**30)
    return plan


def checkpoint_sizes(variant: Variant, device: torch.device, options: EngineOptions, models_dir: Path | None = None,
                     allow_download: bool = True) -> ModelSizes:
    """The models' sizes as they will be loaded, from the weight files' headers (nothing is loaded)."""
    roots = locate(parts_for([variant]), models_dir, allow_download)
    dtypes = dtypes_for(device)
    return sizes_from_folders(roots[TRANSFORMER_REPOS[variant]], roots[HUNYUAN_REPO], roots[REDUX_REPO],
                              text_itemsize=dtypes.text.itemsize, transformer_itemsize=dtypes.transformer.itemsize,
                              fp8_blocks=options.fp8)


def _weights_home(device: torch.device, plan: MemoryPlan, part: str) -> torch.device:
    """Where weights are loaded: on the device what the plan keeps there whole, else CPU RAM (to stream or
    visit from; resident blocks go to the device when their streamer first attaches)."""
    on_device = {"encoders": plan.llama == "gpu" and plan.encoders_on_gpu,
                 "transformer": not plan.streams_blocks and not plan.modulation}[part]
    return device if on_device else torch.device("cpu")


def load_prepared_encoders(device: torch.device, options: EngineOptions, plan: MemoryPlan,
                           models_dir: Path | None = None, allow_download: bool = True) -> Encoders:
    from engine.engine_options import prepare_encoders

    encoders = load_encoders(device, models_dir, allow_download, _weights_home(device, plan, "encoders"),
                             llama_streams=plan.llama != "gpu")
    return prepare_encoders(encoders, device, options, plan)


def load_prepared_transformer(variant: Variant, device: torch.device, options: EngineOptions, plan: MemoryPlan,
                              models_dir: Path | None = None, allow_download: bool = True) -> torch.nn.Module:
    from engine.engine_options import prepare_transformer

    transformer = load_transformer(variant, device, models_dir, allow_download,
                                   _weights_home(device, plan, "transformer"))
    return prepare_transformer(transformer, device, options, plan)
