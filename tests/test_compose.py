"""compose.yaml, read as Compose reads it (YAML merge keys, `${VAR:?message}` from .env): every setting the bot's
services pass is one of the bot's own and validates, each service runs a real role, and the credentials the bot
uses are those the PostgreSQL and MinIO services are set up with. No Docker here: this is what can be checked
without one (README "Several machines")."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bot.cli import main as cli_main
from storage.settings import Settings

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yaml"
DOT_ENV = {"POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "minio-secret"}
BOT_SERVICES = ("frontends", "worker-gpu0")


def _interpolated(value: str) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}`, from DOT_ENV; `$$` is a literal `$`."""
    def one(match: re.Match) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in DOT_ENV:
            return DOT_ENV[name]
        if operator == ":-":
            return rest
        raise AssertionError(f"compose.yaml needs {name}, which .env does not set ({rest})")

    return re.sub(r"\$\{(\w+)(:\?|:-)?([^}]*)\}", one, value).replace("$$", "$")


def _resolved(node):
    if isinstance(node, dict):
        return {key: _resolved(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolved(value) for value in node]
    return _interpolated(node) if isinstance(node, str) else node


@pytest.fixture(scope="module")
def services() -> dict:
    return _resolved(yaml.safe_load(COMPOSE.read_text()))["services"]


@pytest.mark.parametrize("name", BOT_SERVICES)
def test_the_bot_services_pass_only_real_settings_and_they_validate(services, name):
    environment = services[name]["environment"]
    fields = {field.upper() for field in Settings.model_fields}
    unknown = sorted(set(environment) - fields)
    assert not unknown, f"{name} sets what the bot does not read: {unknown}"
    settings = Settings(_env_file=None, **{key.lower(): value for key, value in environment.items()})
    assert settings.database_url.startswith("postgresql://")
    assert settings.storage_url.startswith("s3://")


@pytest.mark.parametrize("name, role", [("frontends", "frontends"), ("worker-gpu0", "worker")])
def test_each_bot_service_runs_its_role(services, name, role, capsys):
    command = services[name]["command"]
    assert command == ["framepack-bot", role]
    with pytest.raises(SystemExit) as ended:
        cli_main([role, "--help"])  # the CLI knows the role (an unknown one exits 2 with a usage error)
    assert ended.value.code == 0


def test_the_bot_uses_the_credentials_the_servers_are_set_up_with(services):
    bot = services["frontends"]["environment"]
    postgres = services["postgres"]["environment"]
    database = urlsplit(bot["DATABASE_URL"])
    assert (database.username, database.password, database.hostname, database.path.lstrip("/")) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "postgres", postgres["POSTGRES_DB"])
    minio = services["minio"]["environment"]
    assert (bot["STORAGE_ACCESS_KEY_ID"], bot["STORAGE_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert urlsplit(bot["STORAGE_ENDPOINT_URL"]).hostname == "minio"
    bucket = urlsplit(bot["STORAGE_URL"]).hostname
    assert f"local/{bucket}" in " ".join(services["minio-bucket"]["command"])  # the bucket made is the one used
    for name in BOT_SERVICES:  # the bot waits for a healthy database and a made bucket
        assert services[name]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "minio-bucket": {"condition": "service_completed_successfully"}}
