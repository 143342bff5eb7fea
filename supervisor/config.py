"""Settings: validated once at start, then passed down (nothing else reads os.environ for a
setting; `run` only peeks at `JOB_SUPERVISOR_JOBS_DIR` and `JOB_SUPERVISOR_DEFAULT_RUNTIME` to start
the pool's fork server early).

Sources, highest first (SPEC §13): command-line flags, environment variables
(`REDIS_URL` and `WORKERS_CONCURRENCY` as they are, everything else prefixed
`JOB_SUPERVISOR_`), a `.env` file in the working directory, a TOML file
(`--config`, default `config/job-supervisor.toml` when present), defaults.
Durations are in seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from supervisor.engine.redis_url import mask_url, parse_redis_url, with_sentinel_credentials
from supervisor.errors import ConfigError

DEFAULT_CONFIG = Path("config/job-supervisor.toml")
Runtime = Literal["inprocess", "process", "subprocess"]
Durability = Literal["async", "replicated"]
Globs = Annotated[list[str], NoDecode]  # from env and flags as `orders.*,images.*` (not JSON)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "job-supervisor"


class Settings(BaseSettings):
    """Every setting of the daemon, the CLI and the clients."""

    model_config = SettingsConfigDict(
        env_prefix="JOB_SUPERVISOR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )

    redis_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "JOB_SUPERVISOR_REDIS_URL", "redis_url"),
        description="Redis to use (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://; "
                    "docs/scaling.md). Unset: start a private embedded Redis.",
    )
    sentinel_username: str | None = Field(None, description="User name the sentinels of a redis+sentinel:// URL "
                                                            "want (the URL's own credentials are the master's).")
    sentinel_password: SecretStr | None = Field(None, description="Password the sentinels of a redis+sentinel:// "
                                                                  "URL want.")
    durability: Durability = Field(
        "async", description="async: a write is acknowledged once the master has it (a failover may lose the "
                             "last writes); replicated: enqueues and the transitions that would lose work wait "
                             "for one replica (WAIT) first. A type's own `durability` overrides it.")
    replica_wait: float = Field(1.0, gt=0, le=60, description="durability = replicated: longest wait for a "
                                                             "replica's acknowledgement (seconds) before the "
                                                             "write fails as not replicated.")
    serve_types: Globs = Field(
        default_factory=list, description="Serve only the job types matching these globs (e.g. orders.*, "
                                          "images.*; empty: every type of jobs/ and tasks/). `run --types`.")
    exclude_types: Globs = Field(
        default_factory=list, description="Never serve the job types matching these globs. `run --exclude-types`.")
    workers_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        gt=0,
        le=1024,
        validation_alias=AliasChoices("WORKERS_CONCURRENCY", "JOB_SUPERVISOR_WORKERS_CONCURRENCY",
                                      "workers_concurrency"),
        description="Worker processes in the `process` runner's pool (default: CPU count).",
    )
    jobs_dir: Path = Field(Path("jobs"), description="Folder of Python handler files.")
    tasks_dir: Path = Field(Path("tasks"), description="Folder of polyglot task programs.")
    state_dir: Path = Field(default_factory=_default_state_dir,
                            description="Embedded Redis data, compiled task cache.")
    instance_name: str = Field(default_factory=socket.gethostname, min_length=1,
                               description="Human name of this instance (host name by default).")
    default_runtime: Runtime = Field("inprocess", description="Runtime of types that name none.")
    default_concurrency: int = Field(10, gt=0, le=10_000,
                                     description="Per-type concurrency in one instance when a type names none "
                                                 "(a process type: this many per pool worker).")
    threads: int = Field(32, gt=0, le=1024, description="Thread pool for sync in-process handlers.")
    max_jobs_per_worker: int | None = Field(None, gt=0,
                                            description="Recycle a pool worker after this many jobs (None: never).")
    max_worker_rss: float | None = Field(None, gt=0,
                                         description="Recycle a pool worker above this RSS, in MB (None: never).")
    cancel_grace: float = Field(10.0, ge=0, description="Cancel: seconds a handler gets to stop cooperatively "
                                                        "before a process or subprocess runner signals it.")
    kill_grace: float = Field(5.0, ge=0, description="Seconds between SIGTERM and SIGKILL for a worker.")
    presence_interval: float = Field(10.0, gt=0, description="Seconds between presence heartbeats.")
    janitor_interval: float = Field(30.0, gt=0, description="Seconds between janitor sweeps.")
    max_finished_per_type: int = Field(100_000, gt=0,
                                       description="Finished records kept per type and state, newest first.")
    ack_wait: float = Field(300.0, gt=0, description="Default lease length (seconds).")
    max_deliver: int = Field(5, gt=0, description="Default deliveries before a job is dead.")
    drain_timeout: float = Field(60.0, ge=0, description="SIGTERM: wait this long for in-flight jobs.")
    retention: float = Field(86_400.0, gt=0, description="Keep completed/cancelled/expired records (seconds).")
    dead_retention: float = Field(30 * 86_400.0, gt=0, description="Keep failed/dead records (seconds).")
    max_idle_wait: float = Field(5.0, gt=0, le=60,
                                 description="Longest blocking wait for work before an idle re-check.")
    settle_window_ms: float = Field(2.0, ge=0, le=100,
                                    description="A process type with at least 8 runs in flight writes its "
                                                "outcomes in batches: fewer than 8 waiting are held up to "
                                                "this long (0: written at once).")
    schedules: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Cron schedules for job types whose file carries none: "
                    "[schedules.NAME] job, cron, timezone, payload, misfire.")
    api_enabled: bool = Field(False, description="Serve the admin HTTP API inside the daemon.")
    api_host: str = Field("127.0.0.1", min_length=1,
                          description="Admin API address; a non-loopback one needs api_token.")
    api_port: int = Field(8765, ge=0, le=65535, description="Admin API port (0: any free port).")
    api_token: SecretStr | None = Field(None, description="Bearer token every admin API route but /health requires.")
    api_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Named bearer tokens beside api_token (name -> token, e.g. one per operator); the "
                    "name of the token used is recorded in the history of every job acted on through the API.")
    api_max_body_bytes: int = Field(1_048_576, gt=0, le=64 * 1_048_576, description="Larger request bodies get 413.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise (journald).")
    # --- observability (supervisor.observability.telemetry) ---
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Trace exporter: none (no-op tracer, no cost), console (one JSON span per line "
                            "on stderr) or otlp (OTLP/HTTP; needs the `otlp` extra).")
    otel_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint, e.g. http://collector:4318 (/v1/traces is appended); "
                          "unset: the OTEL_EXPORTER_OTLP_* variables or http://localhost:4318.")
    otel_service_name: str = Field("job-supervisor", min_length=1, description="service.name of the spans.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus /metrics on 127.0.0.1:PORT (None: only through "
                                          "the admin API).")
    # --- end observability ---

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_redis_url(value.get_secret_value())  # a ValueError names the problem and the right form
        return value

    @field_validator("serve_types", "exclude_types", mode="before")
    @classmethod
    def _split_globs(cls, value: Any) -> Any:
        """A comma-separated string (`orders.*,images.*`, as the flags and env take it) as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003  (pydantic-settings' hook signature)
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls))

    def schedule_specs(self) -> list[Any]:
        """The `[schedules.NAME]` entries as ScheduleSpecs (ConfigError naming the bad one)."""
        if not self.schedules:
            return []  # and croniter stays unloaded: every CLI command loads the settings
        from supervisor.daemon.schedule import ScheduleError, ScheduleSpec  # noqa: PLC0415

        specs = []
        for name, entry in self.schedules.items():
            try:
                specs.append(ScheduleSpec.parse(entry, source=f"settings [schedules.{name}]", name=name))
            except ScheduleError as exc:
                raise ConfigError(f"invalid settings: {exc}") from None
        return specs

    def redis_url_value(self) -> str | None:
        """REDIS_URL, with the sentinels' own credentials (the settings) added to a sentinel URL."""
        if not self.redis_url:
            return None
        return with_sentinel_credentials(
            self.redis_url.get_secret_value(), self.sentinel_username,
            self.sentinel_password.get_secret_value() if self.sentinel_password else None)

    def api_bearer_tokens(self) -> dict[str, str]:
        """Every accepted admin API token by name (api_token's name is ''); empty: no check."""
        tokens = {name: t.get_secret_value() for name, t in self.api_tokens.items() if t.get_secret_value()}
        if self.api_token is not None and self.api_token.get_secret_value():
            tokens[""] = self.api_token.get_secret_value()
        return tokens

    def masked(self) -> dict[str, Any]:
        """Every setting as JSON-ready values, secrets replaced by ***."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "redis_url":
                value = mask_url(value.get_secret_value()) if value else None
            elif isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


#: Environment variable that sets each field (for error messages).
def _env_name(field: str) -> str:
    if field in ("redis_url", "workers_concurrency"):
        return field.upper()
    return "JOB_SUPERVISOR_" + field.upper()


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build Settings from every source, or raise ConfigError naming each bad setting.

    Args:
        config_file: TOML file to read; None means `config/job-supervisor.toml` when present.
        **flags: values from the command line (None values are ignored).
    """
    path = config_file
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist: pass an existing file to --config")
    given = {k: v for k, v in flags.items() if v is not None}

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        settings = _FileSettings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except (ValueError, OSError) as exc:  # unreadable TOML and the like
        raise ConfigError(f"cannot read settings from {path}: {exc}") from None
    settings.schedule_specs()  # a bad schedule is a bad setting: refuse to start
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        loc = err["loc"][0] if err["loc"] else "?"
        field = str(loc).removeprefix("JOB_SUPERVISOR_").lower()
        where = f"env {_env_name(field)}" + (f" or {field} in {path}" if path else "")
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  - unknown setting {loc!r} ({path or 'environment'}): remove it or check its "
                f"spelling; known settings: {', '.join(Settings.model_fields)}"
            )
            continue
        got = err.get("input")
        shown = "***" if field == "redis_url" else repr(got)
        lines.append(f"  - setting '{field}' ({where}) = {shown}: {err['msg']}")
    return "\n".join(lines)
