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
    from engine.memory_modes import MemoryMode
    from engine.speed import ATTENTION_BACKENDS, FRONTEND_KERNELS

    assert set(ATTENTION_KERNELS) == {"auto", *ATTENTION_BACKENDS, *FRONTEND_KERNELS}
    assert set(MEMORY_MODES) == {"auto", *(m.value for m in MemoryMode)}


def test_serve_refuses_malformed_settings_clearly_and_creates_nothing(tmp_path):
    env = {**os.environ, "ENGINE_MEMORY_MODE": "bogus", "MAX_STEPS": "many", "DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Invalid settings (environment or .env)" in done.stderr and "Traceback" not in done.stderr
    assert "MAX_STEPS: Input should be a valid integer" in done.stderr and "ENGINE_MEMORY_MODE" in done.stderr
    assert not (tmp_path / "data").exists()
