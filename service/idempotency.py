"""`Idempotency-Key` for POST: a retried request returns the saved response instead of
running twice.

Semantics (after draft-ietf-httpapi-idempotency-key-header): a POST carrying
`Idempotency-Key: <1..255 visible ASCII characters>` is recorded per (company, key) for
`idempotency_ttl_seconds` (24 h by default). The same key again with the same request
(method, path, query, body — compared by SHA-256, the body itself is never stored) gets
the saved status, body and headers back, marked `Idempotent-Replayed: true`, without
running the route. The same key with a different request, or from another API key of the
company, is 422; the same key while the first request is still running is 409 with
`Retry-After: 1`. Responses with a 5xx or 429 status are not kept (nothing was done, or
the outcome is unknown): the key is released and a retry runs again.

Why a pure ASGI middleware rather than a FastAPI dependency: a replay must skip the
route entirely (body validation, dependencies, serialisation) and return the exact bytes
of the first response, and the response must be captured whole after the route's unit of
work has committed — both are natural around the ASGI app and awkward inside it. The
price is that authentication happens later, in the route dependencies, so the middleware
resolves the company itself with the same lookup (`HMAC(secret, bearer key)` against
`api_keys.secret_hash`, not revoked): one indexed read per POST that carries the header.
A missing or unknown key is not our business: the request passes through untouched and
the route answers 401 as usual.

In flight, across processes and crashes: the winner inserts the row (status NULL) in its
own short transaction before running the route; a concurrent duplicate's insert finds it
(PostgreSQL waits for the winner's insert to commit; SQLite serialises writers) and gets
409. Inside one process a claim set settles races first. A row left in flight by a request
that died with its database connection (the route's outcome is then unknown, as without
the header) is taken over by the next retry when this process owned it and no request of
ours holds it any more, or after `idempotency_lock_seconds` when another process did.

Secrets: the only response that carries one is `POST /v1/api-keys` (the new key, shown
once; DESIGN §9.7 keeps only an HMAC). Encrypting it for replay would put usable keys in
the database for a day, so any response holding a well-formed API key is kept without
its body (id, prefix, name and role only) and a replay gets 409 saying the key was shown
once, with the id to revoke it if that response was lost.

Partner data: lookup responses carry partner ciphertext; when a partnership ends, every
kept response under `/v1/partnerships/{id}/` is deleted with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.auth import hash_key, well_formed
from service.models import ApiKey, IdempotencyKey, utcnow

log = logging.getLogger("blindmap.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LEN = 255
REPLAYED_HEADER = b"idempotent-replayed"
# Headers that belong to the resource, replayed as they were; the rest (request id,
# RateLimit, …) describe the new exchange and are added by the outer middlewares again.
_KEPT_HEADERS = frozenset(
    {b"content-type", b"location", b"etag", b"link", b"cache-control", b"content-language"}
)
_API_KEY_RE = re.compile(rb"bmk_[0-9A-Za-z]{38}")
_SHOWN_ONCE_FIELDS = ("id", "prefix", "name", "role")
_END_PATH = re.compile(r"^/v1/partnerships/([^/]+)/end$")
_PURGE_EVERY_SECONDS = 600.0


class IdempotencyInFlight(errors.Conflict):
    title, slug = "Request already in progress", "idempotency-in-flight"


class IdempotencyKeyReused(errors.Unprocessable):
    title, slug = "Idempotency-Key reused", "idempotency-key-reused"


class IdempotencyShownOnce(errors.Conflict):
    title, slug = "Response not kept", "idempotency-shown-once"


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, hashlib.sha256(body).digest()):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def parse_key(raw: str) -> tuple[str | None, errors.ServiceError | None]:
    """The key from the header (an sf-string `"…"` or a bare token), or a 422."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    problem = None
    if not value:
        problem = ("must not be empty", "string_too_short")
    elif len(value) > MAX_KEY_LEN:
        problem = (
            f"at most {MAX_KEY_LEN} characters (got {len(value)})",
            "string_too_long",
        )
    elif any(not (0x20 <= ord(c) <= 0x7E) for c in value):
        problem = ("printable ASCII characters only", "string_pattern_mismatch")
    if problem is None:
        return value, None
    return None, errors.Unprocessable(
        f"Invalid input: {HEADER} header {problem[0]}",
        errors=[{"field": HEADER, "in": "header", "message": problem[0], "type": problem[1]}],
        max_length=MAX_KEY_LEN,
    )


def _holds_api_key(body: bytes) -> bool:
    return any(well_formed(m.group().decode()) for m in _API_KEY_RE.finditer(body))


def _shown_once_summary(body: bytes) -> bytes | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    summary = {k: doc[k] for k in _SHOWN_ONCE_FIELDS if isinstance(doc.get(k), str)}
    return json.dumps(summary).encode()


@dataclass
class _Outcome:
    action: Literal["pass", "run", "replay", "reject"]
    ident: tuple[uuid.UUID, str] | None = None
    error: errors.ServiceError | None = None
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


class Idempotency:
    """Pure ASGI middleware; sits inside BodyLimit (bodies are bounded by then)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        sessionmaker: sessionmaker[Session],
        secret: bytes,
        ttl_seconds: int,
        lock_seconds: int,
    ) -> None:
        self.app = app
        self.sessionmaker = sessionmaker
        self.secret = secret
        self.ttl = timedelta(seconds=ttl_seconds)
        self.lock = timedelta(seconds=lock_seconds)
        # Names the process (and app instance) that owns an in-flight row.
        self.owner = f"{os.getpid()}:{uuid.uuid4().hex}"
        self._running: set[tuple[uuid.UUID, str]] = set()
        self._running_lock = threading.Lock()
        self._last_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        raw_key = headers.get(b"idempotency-key")
        scheme, _, bearer = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        bearer = bearer.strip()
        if raw_key is None or scheme.lower() != "bearer" or not well_formed(bearer):
            await self.app(scope, receive, send)  # no key, or the route answers 401
            return

        body, receive = await _read_body(receive)
        if body is None:  # the client went away while sending
            return
        path: str = scope["path"]
        digest = fingerprint("POST", path, scope.get("query_string", b""), body)
        outcome = await run_in_threadpool(
            self._begin, bearer, raw_key.decode("latin-1"), digest, path
        )
        if outcome.action == "pass":
            await self.app(scope, receive, send)
        elif outcome.action == "reject":
            assert outcome.error is not None
            await _send_problem(scope, send, outcome.error)
        elif outcome.action == "replay":
            await _send(send, outcome.status, outcome.headers, outcome.body, replayed=True)
        else:
            assert outcome.ident is not None
            await self._run(scope, receive, send, outcome.ident)

    # -- running the route ----------------------------------------------------------------
    async def _run(
        self, scope: Scope, receive: Receive, send: Send, ident: tuple[uuid.UUID, str]
    ) -> None:
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            try:
                await self.app(scope, receive, capture)
            except BaseException:
                await self._quietly(self._release_row, ident)
                raise
            body = b"".join(chunks)
            # Saved before the client sees the response: whoever has seen it can replay it.
            await self._quietly(self._finish, ident, status, headers, body, scope["path"])
        finally:
            self._unclaim(ident)
        await _send(send, status, headers, body)

    async def _quietly(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            await run_in_threadpool(fn, *args)
        except Exception as exc:  # the database may be down: the response still goes out
            log.warning("idempotency record not updated", extra={"error": type(exc).__name__})

    # -- claims (this process) -------------------------------------------------------------
    def _claim(self, ident: tuple[uuid.UUID, str]) -> bool:
        with self._running_lock:
            if ident in self._running:
                return False
            self._running.add(ident)
            return True

    def _unclaim(self, ident: tuple[uuid.UUID, str]) -> None:
        with self._running_lock:
            self._running.discard(ident)

    # -- database (run in the threadpool) ----------------------------------------------------
    def _begin(self, bearer: str, raw_key: str, digest: bytes, path: str) -> _Outcome:
        with self.sessionmaker.begin() as s:
            caller = s.execute(
                select(ApiKey.id, ApiKey.company_id).where(
                    ApiKey.secret_hash == hash_key(self.secret, bearer),
                    ApiKey.revoked_at.is_(None),
                )
            ).first()
            if caller is None:
                return _Outcome("pass")
            key, problem = parse_key(raw_key)
            if problem is not None or key is None:
                return _Outcome("reject", error=problem)
            api_key_id, company_id = caller[0], caller[1]
            ident = (company_id, key)
            if not self._claim(ident):
                return _Outcome("reject", error=_in_flight())
            try:
                outcome = self._begin_claimed(s, ident, api_key_id, digest, path)
            except BaseException:
                self._unclaim(ident)
                raise
            if outcome.action != "run":
                self._unclaim(ident)
            return outcome

    def _begin_claimed(
        self,
        s: Session,
        ident: tuple[uuid.UUID, str],
        api_key_id: uuid.UUID,
        digest: bytes,
        path: str,
    ) -> _Outcome:
        company_id, key = ident
        now = utcnow()
        self._maybe_purge(s)
        pk = (IdempotencyKey.company_id == company_id, IdempotencyKey.key == key)
        s.execute(delete(IdempotencyKey).where(*pk, IdempotencyKey.expires_at <= now))
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        inserted = s.execute(
            insert(IdempotencyKey)
            .values(
                company_id=company_id,
                key=key,
                api_key_id=api_key_id,
                request_hash=digest,
                path=path[:1024],
                owner=self.owner,
                shown_once=False,
                created_at=now,
                locked_at=now,
                expires_at=now + self.ttl,
            )
            .on_conflict_do_nothing(index_elements=["company_id", "key"])
            .returning(IdempotencyKey.key)
        ).first()
        if inserted is not None:
            return _Outcome("run", ident)

        row = s.execute(select(IdempotencyKey).where(*pk)).scalar_one()
        if row.request_hash != digest:
            return _Outcome(
                "reject",
                error=IdempotencyKeyReused(
                    f"This {HEADER} was already used with a different request (method, "
                    "path or body); use a new key for a new request.",
                    header=HEADER,
                ),
            )
        if row.api_key_id != api_key_id:
            return _Outcome(
                "reject",
                error=IdempotencyKeyReused(
                    f"This {HEADER} was already used by another API key of your company; "
                    "use a new key.",
                    header=HEADER,
                ),
            )
        if row.status_code is None:
            # We hold the claim, so no request of this process runs this key: a row we
            # own is left over from a request that could not record its end.
            abandoned = row.owner == self.owner or row.locked_at <= now - self.lock
            if not abandoned:
                return _Outcome("reject", error=_in_flight())
            took = s.execute(
                update(IdempotencyKey)
                .where(*pk, IdempotencyKey.owner == row.owner, IdempotencyKey.status_code.is_(None))
                .values(owner=self.owner, locked_at=now)
            ).rowcount  # type: ignore[attr-defined]
            return _Outcome("run", ident) if took == 1 else _Outcome("reject", error=_in_flight())
        if row.shown_once:
            summary = json.loads(row.response_body or b"{}")
            return _Outcome(
                "reject",
                error=IdempotencyShownOnce(
                    "The first request with this Idempotency-Key created an API key "
                    f"(id {summary.get('id', '?')}, prefix {summary.get('prefix', '?')}); its "
                    "secret was shown once, in that response, and is not kept, so it cannot "
                    "be replayed. If that response was lost, revoke that key and create "
                    "another with a new Idempotency-Key.",
                    header=HEADER,
                    api_key_id=summary.get("id"),
                    api_key_prefix=summary.get("prefix"),
                ),
            )
        stored = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in row.response_headers or []]
        return _Outcome(
            "replay", status=row.status_code, headers=stored, body=row.response_body or b""
        )

    def _finish(
        self,
        ident: tuple[uuid.UUID, str],
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        path: str,
    ) -> None:
        company_id, key = ident
        pk = (
            IdempotencyKey.company_id == company_id,
            IdempotencyKey.key == key,
            IdempotencyKey.owner == self.owner,
        )
        with self.sessionmaker.begin() as s:
            if status >= 500 or status == 429:
                s.execute(delete(IdempotencyKey).where(*pk))
                return
            shown_once = _holds_api_key(body)
            kept = [
                [k.decode("latin-1"), v.decode("latin-1")]
                for k, v in headers
                if k.lower() in _KEPT_HEADERS
            ]
            s.execute(
                update(IdempotencyKey)
                .where(*pk)
                .values(
                    status_code=status,
                    response_headers=kept,
                    response_body=_shown_once_summary(body) if shown_once else body,
                    shown_once=shown_once,
                    expires_at=utcnow() + self.ttl,
                )
            )
            ended = _END_PATH.match(path)
            if ended and 200 <= status < 300:
                prefix = f"/v1/partnerships/{ended.group(1)}/"
                s.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.path.startswith(prefix, autoescape=True),
                        IdempotencyKey.path != path,
                    )
                )

    def _release_row(self, ident: tuple[uuid.UUID, str]) -> None:
        company_id, key = ident
        with self.sessionmaker.begin() as s:
            s.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.company_id == company_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.owner == self.owner,
                    IdempotencyKey.status_code.is_(None),
                )
            )

    def _maybe_purge(self, s: Session) -> None:
        now = time.monotonic()
        if now - self._last_purge < _PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        s.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow()))


def _in_flight() -> errors.ServiceError:
    return IdempotencyInFlight(
        f"A request with this {HEADER} is still in progress; retry shortly to get its response.",
        header=HEADER,
        headers={"Retry-After": "1"},
    )


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    pending: list[Message] = [
        {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    ]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return b"".join(chunks), replay


async def _send(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    replayed: bool = False,
) -> None:
    out = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    out.append((b"content-length", str(len(body)).encode()))
    if replayed:
        out.append((REPLAYED_HEADER, b"true"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def _send_problem(scope: Scope, send: Send, err: errors.ServiceError) -> None:
    body = json.dumps(err.problem(scope["path"])).encode()
    headers = [(b"content-type", errors.PROBLEM_JSON.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await _send(send, err.status, headers, body)
