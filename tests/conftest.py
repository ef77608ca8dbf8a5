from __future__ import annotations

import copy
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Workers in tests claim at once; the warm-up (a throw-away render before the first claim) has tests of its
# own, which switch it on (tests/test_warm_up.py).
os.environ["ENGINE_WARM_UP"] = "false"
# Workers decode as diffusers does, so their videos can be compared with the engine's stock renders frame for
# frame (the H.264 encoder turns the fast decoder's one-level differences into larger ones); the fast decoder
# has tests of its own against diffusers' pixels (tests/test_fast_decode.py).
os.environ["ENGINE_FAST_DECODE"] = "false"
# Each test process takes its share of the cores as torch threads (one each for the Makefile's two processes on
# CI's two cores), and so do the workers and CLIs it starts: two processes of two threads each on two cores
# fought over them (the first pass took 819 s so, 605 s with one thread each). The golden tests set the two
# threads their files were made with themselves.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_TEST_THREADS = max(1, _CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(_TEST_THREADS)
os.environ["OMP_NUM_THREADS"] = str(_TEST_THREADS)
# Without a GPU, Triton's kernels (engine/decode_kernels.py) run in its interpreter. Triton reads this as it
# decorates each kernel, its own library's included, so it is set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from postgres_server import postgres_server, postgres_url  # noqa: E402, F401  (fixtures)
from s3_server import ACCESS_KEY, SECRET_KEY, e2e_bucket, s3_endpoint, s3_settings  # noqa: E402, F401  (fixtures)
from tiny_models import build_tiny_models  # noqa: E402

from engine.models import load_models  # noqa: E402
from storage.settings import Settings  # noqa: E402
from storage.store import JobStore, open_store  # noqa: E402

# FRAMEPACK_TEST_BACKEND=postgres-s3 runs the end-to-end tests (chats, workers, serve) on the session's PostgreSQL
# server and moto's S3 server instead of SQLite and the data folder alone: see backend_under_test below.
TEST_BACKEND = os.environ.get("FRAMEPACK_TEST_BACKEND", "sqlite")
if TEST_BACKEND not in ("sqlite", "postgres-s3"):
    raise pytest.UsageError(f"FRAMEPACK_TEST_BACKEND={TEST_BACKEND!r}: use sqlite (the default) or postgres-s3")
_prefixes = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(why): the test is about SQLite or the data folder itself, so "
                                       "FRAMEPACK_TEST_BACKEND=postgres-s3 skips it")
    config.addinivalue_line("markers", "scale: issue 18's scale figures on a real server (part of the default run, "
                                       "under 30 s; -m scale alone runs them)")


@pytest.fixture(autouse=True)
def backend_under_test(request, monkeypatch) -> str:
    """Under FRAMEPACK_TEST_BACKEND=postgres-s3, every Settings the test builds (helpers.worker_settings, the
    `stores` fixture) and every process it starts (helpers.worker_env copies the environment) uses a new database
    on the session's PostgreSQL server and a new prefix in the session's bucket, through the environment:
    DATABASE_URL and STORAGE_*. A test that passes database_url= or storage_url= itself keeps its own."""
    if TEST_BACKEND == "sqlite":
        return TEST_BACKEND
    marker = request.node.get_closest_marker("sqlite_only")
    if marker is not None:
        pytest.skip(f"SQLite only: {marker.args[0] if marker.args else 'about SQLite itself'}")
    bucket = request.getfixturevalue("e2e_bucket")
    env = {"DATABASE_URL": request.getfixturevalue("postgres_url"),
           "STORAGE_URL": f"s3://{bucket}/test-{os.getpid()}-{next(_prefixes)}",
           "STORAGE_ENDPOINT_URL": request.getfixturevalue("s3_endpoint"), "STORAGE_REGION": "us-east-1",
           "STORAGE_ACCESS_KEY_ID": ACCESS_KEY, "STORAGE_SECRET_ACCESS_KEY": SECRET_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return TEST_BACKEND


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


@pytest.fixture(scope="module")
def lively_vae(original_models):
    """A copy of the tiny VAE with livelier random weights (the saved ones decode to near-flat pixels)."""
    vae = copy.deepcopy(original_models.encoders.vae)
    for parameter in vae.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return vae


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

    async def open_for_test(settings: Settings) -> JobStore:
        opened.append(await open_store(settings))  # SQLite, or what FRAMEPACK_TEST_BACKEND chose (DATABASE_URL...)
        return opened[-1]

    yield open_for_test
    for store in opened:
        await store.close()
