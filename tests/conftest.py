from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Workers in tests claim at once; the warm-up (a throw-away render before the first claim) has tests of its
# own, which switch it on (tests/test_warm_up.py).
os.environ["ENGINE_WARM_UP"] = "false"

from postgres_server import postgres_server, postgres_url  # noqa: E402, F401  (fixtures)
from s3_server import s3_endpoint, s3_settings  # noqa: E402, F401  (fixtures)
from tiny_models import build_tiny_models  # noqa: E402

from engine.models import load_models  # noqa: E402
from storage.settings import Settings  # noqa: E402
from storage.sqlite_store import SqliteJobStore  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str | None:
    """A test taking this runs on both backends: None (SQLite under the data folder), then a new, empty PostgreSQL
    database (tests/postgres_server.py)."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def original_models(tiny_models_dir):
    return load_models("original", "cpu", tiny_models_dir)


@pytest.fixture(scope="session")
def f1_models(tiny_models_dir):
    return load_models("f1", "cpu", tiny_models_dir)


@pytest.fixture()
def models_for(original_models, f1_models):
    return {"original": original_models, "f1": f1_models}


def make_picture(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: a real picture, not a constant."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return Image.fromarray((base + rng.random((height, width, 3)) * 55).astype(np.uint8))


@pytest.fixture()
def picture() -> Image.Image:
    return make_picture()


@pytest.fixture()
async def stores():
    """Opens stores for a test and always closes them: an open aiosqlite thread would hang pytest's exit."""
    opened = []

    async def open_store(settings: Settings) -> SqliteJobStore:
        opened.append(await SqliteJobStore.open(settings))
        return opened[-1]

    yield open_store
    for store in opened:
        await store.close()
