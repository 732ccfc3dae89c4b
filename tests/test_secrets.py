"""Secrets never leak: DISCORD_TOKEN and API keys stay out of logs, error messages, the database, exports,
member-facing messages and tracebacks; config files holding secrets must not be readable by others.

Each flow runs with distinctive secret values, and everything it leaves behind is searched for them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import backends.openai_backend  # noqa: F401  (imported up front: the bot's first import of openai takes seconds)
from settings import ConfigError, ModelSpec, load_settings
from storage import lessons as q
from tests import discord_fixtures as fixtures
from tests.discord_fixtures import reply_to
from tests.fakeopenai import FakeOpenAI
from tests.test_cli import teacher_reply, write_config

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-h6b-Zq8XvLr2TnWm4Kp7Yd9s"
DISCORD_TOKEN = "MTQ1Ni.h6b-G7kQ2w.Xr9vTn4LmPq8ZsYd3Wb6Jc1Hf5"
SECRETS = (API_KEY, DISCORD_TOKEN, API_KEY[-12:], DISCORD_TOKEN[-16:])  # whole, and the tails servers echo


def leaks(*texts: str | bytes) -> list[str]:
    """The secrets (or their tails) found in any of the texts."""
    found = []
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        found += [s for s in SECRETS if s.encode() in data]
    return found


def files_bytes(*paths: Path) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.is_file())


def db_files(home: Path) -> list[Path]:
    return [home / name for name in ("classroom.db", "classroom.db-wal", "classroom.db-journal")]


@pytest.fixture
def keyed_server():
    """A server that wants another key than ours, and echoes part of what it got, like OpenAI does."""
    with FakeOpenAI(require_key="sk-the-right-one") as server:
        server.set_reply(teacher_reply)
        yield server


@pytest.mark.simcord(settle_timeout=0.9)
async def test_a_rejected_key_and_a_crash_in_discord_leak_nothing(classroom, keyed_server, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD_TOKEN)
    monkeypatch.setenv("CLASSROOM_H6B_KEY", API_KEY)
    prof = ModelSpec(name="prof", backend="openai", model="fake-model", base_url=keyed_server.base_url,
                     api_key_env="CLASSROOM_H6B_KEY", max_retries=1, timeout=5,
                     persona={"display_name": fixtures.PERSONAS["prof"]})
    classroom.factory.settings = classroom.settings.model_copy(update={"models": {**classroom.settings.models, "prof": prof}})
    classroom.factory.backends = {"kid": classroom.student}
    await classroom.restart()

    await classroom.start_lesson(turns=3)
    await classroom.run_out()
    from plugins.models import _cog

    def crash(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_cog, "models_embed", crash)
    crashed = reply_to(await classroom.alice.slash(classroom.channel, "models"))
    tracebacks = "".join("".join(traceback.format_exception(e)) for e in classroom.env.errors)

    with classroom.db() as db:
        lesson = q.get_lesson(db, 1)
    assert keyed_server.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"  # the key really was sent
    assert lesson["status"] == "failed"
    assert lesson["reason"].endswith("API key rejected; check the CLASSROOM_H6B_KEY environment variable (HTTP 401)")
    assert crashed.content == "Something went wrong on my side. It was logged; please try again."
    said = json.dumps([r.json for r in classroom.env.http_requests if r.json is not None], ensure_ascii=False)
    captured = capfd.readouterr()
    assert "API key rejected" in said and "Traceback" in caplog.text  # the flows really ran and were logged
    assert leaks(caplog.text, captured.out, captured.err, said, tracebacks, files_bytes(*db_files(classroom.settings.home))) == []


def cli(cfg: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "-v", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def test_the_cli_leaks_nothing_in_verbose_logs_errors_the_database_or_exports(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CLASSROOM_HOME", "CLASSROOM_CONFIG")}
    env.update(DISCORD_TOKEN=DISCORD_TOKEN, OPENAI_API_KEY=API_KEY)
    with FakeOpenAI(require_key=API_KEY) as server:  # the key is sent, and accepted, on every request
        server.set_reply(teacher_reply)
        server.enqueue("500", "500")  # the first lesson fails, the second one runs
        cfg = write_config(tmp_path, server.base_url)
        os.chmod(cfg, 0o600)
        runs = [
            cli(cfg, "lesson", "--topic", "what a stock is", "--turns", "3", env=env),
            cli(cfg, "lesson", "--topic", "bonds", "--turns", "3", env=env),
            cli(cfg, "export", "--out", str(tmp_path / "export.jsonl"), env=env),
        ]
        sent = [r.headers["authorization"] for r in server.chat_requests]

    assert set(sent) == {f"Bearer {API_KEY}"}
    assert "server error after 2 attempts" in runs[0].stdout + runs[0].stderr
    assert "DEBUG" in runs[1].stderr and runs[1].returncode == 0
    assert runs[2].returncode == 0 and (tmp_path / "export.jsonl").stat().st_size > 0
    home = tmp_path / "home"
    everything = [r.stdout + r.stderr for r in runs] + [(tmp_path / "export.jsonl").read_bytes()]
    everything += [p.read_bytes() for p in home.rglob("*") if p.is_file()]  # the database, run logs, the rest
    assert any(p.name == "classroom.db" for p in home.rglob("*"))
    assert leaks(*everything) == []


def test_the_bot_failing_to_reach_discord_does_not_print_its_token(tmp_path):
    """A crash at start-up (no network here): the error and any traceback must not carry the token."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CLASSROOM_CONFIG")}
    env.update(DISCORD_TOKEN=DISCORD_TOKEN, CLASSROOM_HOME=str(tmp_path / "home"), CLASSROOM_NO_SCHEDULER="1")
    cfg = tmp_path / "classroom.toml"
    cfg.write_text('[models.kid]\nbackend = "local"\npath = "scripted"\ntrainable = true\n'
                   '[lessons]\ndefault_teacher = "kid"\ndefault_student = "kid"\n')
    try:
        run = subprocess.run([sys.executable, "bot.py", "--config", str(cfg)], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env=env)
        out = run.stdout + run.stderr
    except subprocess.TimeoutExpired as e:  # still trying to connect: what it printed so far counts
        out = (e.stdout or b"").decode() + (e.stderr or b"").decode() if isinstance(e.stdout, bytes) else str(e.output)
    assert "could not reach Discord" in out or "Discord refused DISCORD_TOKEN" in out, out[-2000:]
    assert leaks(out) == [], out[-2000:]


# ---- config files holding secrets


def secret_config(tmp_path: Path, mode: int) -> Path:
    cfg = tmp_path / "classroom.toml"
    cfg.write_text(f'[models.x]\nbackend = "local"\npath = "p"\ntrainable = true\napi_key = "{API_KEY}"\n')
    os.chmod(cfg, mode)
    return cfg


def test_a_secret_config_readable_by_others_is_warned_about_and_refused_in_strict_mode(tmp_path, caplog):
    cfg = secret_config(tmp_path, 0o644)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as not_strict:
        load_settings(cfg, env={})
    assert f"{cfg}: file holds secrets and is readable by others; run `chmod 600 {cfg}`" in caplog.text
    with pytest.raises(ConfigError, match="chmod 600") as strict:
        load_settings(cfg, env={}, strict_permissions=True)
    assert leaks(caplog.text, str(not_strict.value), str(strict.value)) == []


def test_a_private_secret_config_gets_no_warning(tmp_path, caplog):
    cfg = secret_config(tmp_path, 0o600)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as error:  # api_key is not a setting
        load_settings(cfg, env={}, strict_permissions=True)
    assert "readable by others" not in caplog.text and "chmod" not in str(error.value)
    assert "api_key" in str(error.value) and leaks(str(error.value)) == []
