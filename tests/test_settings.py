"""Configuration in one place: every setting is documented in .env.example and read from the environment."""

from __future__ import annotations

from pathlib import Path

from storage.settings import Settings

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
