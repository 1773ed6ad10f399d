"""The one place that scopes queries to the caller's tenant.

Every domain reads tenant-owned rows through a `TenantRepository`; an object outside the
caller's tenant is indistinguishable from a missing one (404, never 403).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from service import errors
from service.models import Base

M = TypeVar("M", bound=Base)

MAX_PAGE = 1000


class TenantRepository(Generic[M]):
    """Rows of `model` that belong to `company_id`.

    Subclasses name the model; those whose rows are shared between two companies
    (partnerships) override `scope()`.
    """

    model: ClassVar[type[Any]]
    not_found: ClassVar[str] = "No such object"

    def __init__(self, session: Session, company_id: uuid.UUID) -> None:
        self.session = session
        self.company_id = company_id

    def scope(self) -> ColumnElement[bool]:
        return self.model.company_id == self.company_id  # type: ignore[no-any-return]

    def select(self) -> Select[M]:
        return select(self.model).where(self.scope())

    def get(self, obj_id: uuid.UUID | str, *, for_update: bool = False) -> M:
        try:
            key = obj_id if isinstance(obj_id, uuid.UUID) else uuid.UUID(str(obj_id))
        except ValueError:
            raise errors.NotFound(f"{self.not_found}: {obj_id}") from None
        stmt = self.select().where(self.model.id == key)
        if for_update:
            stmt = stmt.with_for_update()
        obj = self.session.execute(stmt).scalar_one_or_none()
        if obj is None:
            raise errors.NotFound(f"{self.not_found}: {obj_id}")
        return obj

    def add(self, obj: M) -> M:
        self.session.add(obj)
        self.session.flush()
        return obj

    def page(
        self, stmt: Select[M], *, cursor: str | None, limit: int
    ) -> tuple[Sequence[M], str | None]:
        """Keyset pagination, newest first, on (created_at, id)."""
        created, ident = self.model.created_at, self.model.id
        if cursor:
            at, last_id = decode_cursor(cursor)
            stmt = stmt.where(or_(created < at, and_(created == at, ident < last_id)))
        rows = (
            self.session.execute(stmt.order_by(created.desc(), ident.desc()).limit(limit + 1))
            .scalars()
            .all()
        )
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        last: Any = rows[-1]
        return rows, encode_cursor(last.created_at, last.id)


class Compiled:
    """A statement compiled once for PostgreSQL and run on the session's own psycopg
    connection (same transaction): the hot report reads skip SQLAlchemy's per-execution
    work (cache key, parameter processing, result metadata). Only for statements whose
    result needs no SQLAlchemy type processing (UUIDs, JSON and bytes come back from
    psycopg as the same Python values) and without expanding IN parameters. Elsewhere
    (SQLite) the statement runs through the session as usual."""

    def __init__(self, stmt: Any, *, binary: bool = False) -> None:
        self.stmt = stmt
        # binary results: bytea arrives as raw bytes instead of hex text that PostgreSQL
        # writes and psycopg parses (a 10k-record overlaps page: 2.4 MB of payloads)
        self.binary = binary
        self._pg: tuple[str, dict[str, Any]] | None = None

    def rows(self, session: Session, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if session.get_bind().dialect.name != "postgresql":
            return [tuple(r) for r in session.execute(self.stmt, params)]
        if self._pg is None:
            compiled = self.stmt.compile(dialect=session.get_bind().dialect)
            self._pg = (str(compiled), dict(compiled.params))
        sql, defaults = self._pg
        raw: Any = session.connection().connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(sql, {**defaults, **params}, binary=self.binary)
            return cur.fetchall()  # type: ignore[no-any-return]


def encode_cursor(at: datetime, obj_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(obj_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, obj_id = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(obj_id)
    except (ValueError, TypeError, binascii.Error):
        raise errors.Unprocessable(
            "Invalid cursor",
            errors=[{"field": "cursor", "message": "not a cursor this API issued"}],
        ) from None
