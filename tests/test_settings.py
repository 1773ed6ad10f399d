"""Settings fail fast with messages that say what to do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import DEFAULT_DATABASE_URL, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (
        "BLINDMAP_ENV",
        "BLINDMAP_SECRET_KEY",
        "BLINDMAP_DATABASE_URL",
        "BLINDMAP_MAX_BODY_BYTES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_dev_defaults_work_with_zero_setup():
    s = Settings()
    assert s.database_url == DEFAULT_DATABASE_URL and s.is_sqlite
    assert s.hmac_secret


def test_secret_required_outside_dev(monkeypatch):
    monkeypatch.setenv("BLINDMAP_ENV", "prod")
    with pytest.raises(ValidationError, match="BLINDMAP_SECRET_KEY is required"):
        Settings()
    monkeypatch.setenv("BLINDMAP_SECRET_KEY", "short")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings()
    monkeypatch.setenv("BLINDMAP_SECRET_KEY", "k" * 40)
    assert Settings().hmac_secret == b"k" * 40


def test_env_prefix_and_url_normalisation(monkeypatch):
    monkeypatch.setenv("BLINDMAP_DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("BLINDMAP_MAX_BODY_BYTES", "1024")
    s = Settings()
    assert s.database_url == "postgresql+psycopg://u@db/x" and s.max_body_bytes == 1024


@pytest.mark.parametrize(
    "bad", [{"database_url": "mysql://x"}, {"max_body_bytes": 0}, {"nonsense": 1}]
)
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_secret_is_not_shown_in_repr(monkeypatch):
    monkeypatch.setenv("BLINDMAP_SECRET_KEY", "s" * 40)
    assert "s" * 40 not in repr(Settings())
