"""The SDK installs and imports without any server dependency."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires

SERVER_ONLY = {
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "uvicorn",
    "pydantic-settings",
}


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}


def test_sdk_declares_no_server_dependency():
    declared = _names(requires("blindmap") or [])
    assert declared and not (declared & SERVER_ONLY), declared & SERVER_ONLY


def test_importing_the_sdk_loads_no_server_module():
    forbidden = sorted(SERVER_ONLY | {"service", "pydantic_settings"})
    code = (
        "import sys, blindmap, blindmap.cli, blindmap.protocol\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout


def test_dependencies_have_lower_bounds():
    for dist in ("blindmap", "blindmap-service"):
        for req in requires(dist) or []:
            if "extra ==" in req:
                continue
            assert ">=" in req, f"{dist}: {req} has no lower bound"
