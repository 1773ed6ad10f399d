"""Service settings: one validated object, built explicitly and passed to create_app()."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///var/blindmap.db"
# Used only when env=dev so that `make run`/`make demo` work with zero setup; any other
# environment must supply its own secret (validated below).
_DEV_SECRET = "dev-only-insecure-api-key-hmac-secret"  # noqa: S105


class Environment(StrEnum):
    dev = "dev"
    test = "test"
    prod = "prod"


class Settings(BaseSettings):
    """Read from `BLINDMAP_*` environment variables (and `.env` if present)."""

    model_config = SettingsConfigDict(
        env_prefix="BLINDMAP_", env_file=".env", extra="forbid", frozen=True
    )

    env: Environment = Environment.dev
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    secret_key: SecretStr | None = Field(
        None, description="HMAC secret for API keys; at least 32 characters outside dev"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="413 above this")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    db_pool_size: int = Field(10, ge=1, le=200)

    # Upload guards (each rejection names the limit; see docs/limits in README)
    max_chunk_records: int = Field(50_000, ge=1, le=500_000)
    max_population_records: int = Field(2_000_000, ge=1, description="population size cap")
    max_sealed_bytes: int = Field(4096, ge=64, description="per sealed payload")
    max_shrink_fraction: float = Field(
        0.5, gt=0, le=1, description="a commit may shrink a list by at most this (or confirm)"
    )
    max_commits_per_day: int = Field(
        24, ge=1, description="commits per population per partnership per 24 h (anti-probing)"
    )
    staged_upload_ttl_seconds: int = Field(24 * 3600, ge=1)

    reveal_budget_per_day: int = Field(
        200_000, ge=1, description="partner records released to one viewer per partnership per 24 h"
    )

    # Idempotency-Key on POST (service/idempotency.py)
    idempotency_ttl_seconds: int = Field(
        24 * 3600, ge=60, description="how long a key and its saved response are kept"
    )
    idempotency_lock_seconds: int = Field(
        300, ge=1, description="an in-flight key older than this is presumed abandoned"
    )

    # Per-API-key rate limit (service/ratelimit.py): a token bucket per key, per process
    rate_limit_enabled: bool = True
    rate_limit_per_second: float = Field(
        1000.0, gt=0, description="sustained requests per second per API key"
    )
    rate_limit_burst: int = Field(2000, ge=1, description="bucket size: requests in a burst")
    rate_limit_delay_seconds: float = Field(
        0.25, ge=0, le=5, description="a 429 is held this long (slows closed-loop floods)"
    )

    # Background jobs
    embedded_worker: bool = Field(True, description="run the job worker inside the API process")
    worker_poll_seconds: float = Field(1.0, gt=0)
    job_lease_seconds: int = Field(600, ge=5, description="a running job older is re-claimed")
    job_max_attempts: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.secret_key is None:
            if self.env is not Environment.dev:
                raise ValueError(
                    f"BLINDMAP_SECRET_KEY is required when BLINDMAP_ENV={self.env.value} "
                    "(generate one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
        elif len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("BLINDMAP_SECRET_KEY must be at least 32 characters")
        url = self.database_url
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            raise ValueError(
                "BLINDMAP_DATABASE_URL must be sqlite:///… or postgresql+psycopg://…, "
                f"got {url.split(':', 1)[0]}:…"
            )
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            # psycopg 3 is the only PostgreSQL driver we ship; spell it out for SQLAlchemy.
            object.__setattr__(
                self, "database_url", "postgresql+psycopg://" + url.split("://", 1)[1]
            )
        return self

    @property
    def hmac_secret(self) -> bytes:
        value = self.secret_key.get_secret_value() if self.secret_key else _DEV_SECRET
        return value.encode()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
