"""Configuration in one place: every setting is documented in .env.example and read from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from storage.settings import ATTENTION_KERNELS, MEMORY_MODES, Settings, describe

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_listed_in_env_example():
    text = (ROOT / ".env.example").read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert missing == []


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MAX_QUEUED_PER_USER", "7")
    monkeypatch.setenv("FAIR_QUEUE", "false")
    settings = Settings()
    assert settings.data_dir == tmp_path / "d" and settings.max_queued_per_user == 7 and not settings.fair_queue


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make run" in readme and "make test" in readme
    assert ci.strip().endswith("make test")


def test_engine_choices_are_checked_when_the_settings_load(monkeypatch):
    monkeypatch.setenv("ENGINE_ATTENTION", " FA3 ")
    assert Settings().engine_attention == "fa3"
    monkeypatch.setenv("ENGINE_ATTENTION", "flash-attn")
    monkeypatch.setenv("ENGINE_MEMORY_MODE", "medium")
    with pytest.raises(ValidationError) as raised:
        Settings()
    text = describe(raised.value)
    assert "ENGINE_ATTENTION: Value error, 'flash-attn' is not one of auto, sdpa" in text
    assert "ENGINE_MEMORY_MODE: Value error, 'medium' is not one of auto, high, low" in text


def test_the_settings_know_every_engine_name():
    from engine.memory_plan import NAMED_PLANS
    from engine.speed import ATTENTION_BACKENDS, FRONTEND_KERNELS

    assert set(ATTENTION_KERNELS) == {"auto", *ATTENTION_BACKENDS, *FRONTEND_KERNELS}
    assert set(MEMORY_MODES) == {"auto", *NAMED_PLANS}


def test_serve_refuses_malformed_settings_clearly_and_creates_nothing(tmp_path):
    env = {**os.environ, "ENGINE_MEMORY_MODE": "bogus", "MAX_STEPS": "many", "DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Invalid settings (environment or .env)" in done.stderr and "Traceback" not in done.stderr
    assert "MAX_STEPS: Input should be a valid integer" in done.stderr and "ENGINE_MEMORY_MODE" in done.stderr
    assert not (tmp_path / "data").exists()


@pytest.fixture()
def fresh_settings(monkeypatch, tmp_path):
    """get_settings() read afresh in an empty folder (no .env but the test's own)."""
    from storage.settings import get_settings

    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield get_settings
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEASE_SECONDS", "nan"), ("LEASE_SECONDS", "0"), ("LEASE_SECONDS", "inf"), ("VIDEO_CRF", "99"),
        ("MAX_SECONDS", "-5"), ("MAX_SECONDS", "121"), ("DEFAULT_SECONDS", "0.5"), ("MAX_STEPS", "101"),
        ("DEFAULT_STEPS", "0"), ("MAX_QUEUED_PER_USER", "-1"), ("MAX_IMAGE_PIXELS", "10"),
        ("MAX_IMAGE_BYTES", "10000000000"), ("ALLOWED_VARIANTS", "foo"), ("ALLOWED_VARIANTS", ""),
        ("ENGINE_GPUS", "abc"), ("ENGINE_GPUS", "0;1"), ("ENGINE_DEVICE", "tpu"), ("ENGINE_DEVICE", "cuda:x"),
        ("RENDER_RESOLUTION", "5000"), ("RENDER_RESOLUTION", "0"), ("ENGINE_WORKERS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"), ("DEFAULT_SECONDS_PER_STEP", "nan"), ("DEFAULT_SECTION_OVERHEAD", "-1"),
        ("DEFAULT_TEACACHE_FACTOR", "0"), ("TELEGRAM_UPLOAD_LIMIT", "0"), ("ENGINE_TEACACHE", "2"),
        ("ENGINE_STREAM_SLOTS", "0"), ("DEFAULT_SEED", "-1"), ("MAX_PROMPT_CHARS", "0"),
        ("DISCORD_GUILD_IDS", "my-server"), ("DISCORD_ADMIN_USER_IDS", "@me"), ("TELEGRAM_ADMIN_IDS", "me"),
        ("DISCORD_API_URL", "discord.com/api"), ("TELEGRAM_API_URL", "ftp://api.telegram.org"),
        ("STORAGE_ENDPOINT_URL", "minio-host:9000"), ("EXTEND_VIDEO_CODECS", "h264,,!!"), ("EXTEND_VIDEO_CODECS", ","),
    ],
)
def test_a_value_out_of_range_names_its_setting(fresh_settings, monkeypatch, name, value):
    from storage.settings import SettingsError

    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        fresh_settings()
    assert f"\n  {name}: " in str(raised.value) and len(str(raised.value).splitlines()) == 2


def test_the_default_duration_and_steps_stay_within_their_maximums(fresh_settings, monkeypatch):
    from storage.settings import SettingsError

    monkeypatch.setenv("MAX_SECONDS", "10")
    monkeypatch.setenv("MAX_STEPS", "20")
    monkeypatch.setenv("DEFAULT_STEPS", "20")
    assert (fresh_settings().default_seconds, fresh_settings().default_steps) == (5, 20)
    monkeypatch.setenv("DEFAULT_SECONDS", "30")
    monkeypatch.setenv("DEFAULT_STEPS", "25")
    fresh_settings.cache_clear()
    with pytest.raises(SettingsError) as raised:
        fresh_settings()
    assert "DEFAULT_SECONDS: Value error, must be between 1 and MAX_SECONDS (10)" in str(raised.value)
    assert "DEFAULT_STEPS: Value error, must be between 1 and MAX_STEPS (20)" in str(raised.value)


def test_a_file_as_the_data_folder_is_refused(fresh_settings, monkeypatch, tmp_path):
    from storage.settings import SettingsError

    (tmp_path / "data").write_text("not a folder")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SettingsError, match="DATA_DIR: Value error, is a file, not a folder"):
        fresh_settings()


def test_secrets_are_never_echoed(fresh_settings, monkeypatch):
    from storage.settings import SettingsError

    monkeypatch.setenv("DATABASE_URL", "mysql://bob:hunter2@db/framepack")  # not a backend we have
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:hunter2 ")
    monkeypatch.setenv("DISCORD_TOKEN", "hunter2 hunter2")
    with pytest.raises(SettingsError) as raised:
        fresh_settings()
    text = str(raised.value)
    assert "hunter2" not in text and text.count("(got '***')") == 2
    assert "DATABASE_URL: " in text and "DISCORD_TOKEN: " in text and "TELEGRAM_TOKEN" not in text  # stripped


def test_lists_are_read_into_one_form(fresh_settings, monkeypatch):
    monkeypatch.setenv("ENGINE_GPUS", " 0, 1 ")
    monkeypatch.setenv("ALLOWED_VARIANTS", "F1 original")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "12 34")
    monkeypatch.setenv("TELEGRAM_ADMIN_IDS", "5, 6")
    monkeypatch.setenv("ENGINE_DEVICE", "CUDA:1")
    settings = fresh_settings()
    assert (settings.engine_gpus, settings.allowed_variants, settings.discord_guild_ids) == ("0,1", "f1,original",
                                                                                              "12,34")
    assert (settings.telegram_admin_ids, settings.engine_device) == ("5,6", "cuda:1")


def test_a_misspelled_setting_in_env_is_named(fresh_settings, tmp_path, caplog):
    import logging

    (tmp_path / ".env").write_text("MAX_SECOND=5\nengine_gpu=0\nDISCORD_TOKN=x\nMAX_WIDGETS=3\nHF_HOME=/hf\nFOO=1\n")
    with caplog.at_level(logging.WARNING, logger="storage.settings"):
        assert fresh_settings().max_seconds == 120
    warned = [r.getMessage() for r in caplog.records]
    assert any("MAX_SECOND " in w and "did you mean MAX_SECONDS?" in w for w in warned)
    assert any("engine_gpu " in w and "ENGINE_GPUS" in w for w in warned)
    assert any("DISCORD_TOKN " in w and "DISCORD_TOKEN" in w for w in warned)
    assert any("MAX_WIDGETS " in w for w in warned)  # our prefix, no close name: still worth a word
    assert len(warned) == 4 and not any("HF_HOME" in w or "FOO" in w for w in warned)



def test_the_settings_repr_shows_no_secret():
    from storage.settings import Settings

    shown = repr(Settings(database_url="postgresql://bob:hunter2pw@db/fp", telegram_token="123:hunter2tg",
                          discord_token="hunter2.dc.token", storage_secret_access_key="hunter2s3"))
    assert "hunter2" not in shown and "data_dir" in shown


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DATABASE_URL", "postgresql://bob:hunter2@db:notaport/fp", "has a port that is not a number from 1 to 65535"),
    ("DATABASE_URL", "postgresql://bob:hunter2@db1:5432,db2:99999/fp", "has a port that is not a number"),
    ("DATABASE_URL", "postgresql://bob:hunter2@[::1/fp", "has an IPv6 host without its closing ]"),
    ("STORAGE_URL", "s3://AKIAFRAMEPACK:hunter2@bucket/x", "holds credentials (name:key@)"),
    ("ENGINE_GPUS", "0,1,0", "names a GPU twice"),
])
def test_a_malformed_address_or_gpu_list_is_named_and_no_secret_shown(fresh_settings, monkeypatch, name, value,
                                                                      says):
    from storage.settings import SettingsError

    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        fresh_settings()
    assert f"{name}: Value error, {says}" in str(raised.value) and "hunter2" not in str(raised.value)


def test_an_env_file_that_is_not_utf8_is_named(fresh_settings, tmp_path):
    from storage.settings import SettingsError

    (tmp_path / ".env").write_bytes(b"TELEGRAM_TOKEN=caf\xe9\n")
    with pytest.raises(SettingsError, match=r"\.env is not UTF-8 text \(byte 18 is not\): save it as UTF-8"):
        fresh_settings()
