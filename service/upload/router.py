"""HTTP routes for uploads: stage, send chunks, commit, abort; the sync status."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from blindmap import protocol
from service import errors
from service.auth import Principal, ReaderKey, UploaderKey
from service.db import SessionDep, finish
from service.upload import service
from service.upload import status as sync

router = APIRouter(tags=["uploads"])
_CHUNK_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq", "text/plain")
_BINARY_TYPES = (protocol.BINARY_CHUNK, "application/octet-stream")


@router.post(
    "/v1/partnerships/{partnership_id}/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=protocol.Upload,
)
def create_upload(
    partnership_id: uuid.UUID,
    body: protocol.UploadCreate,
    request: Request,
    session: SessionDep,
    caller: UploaderKey,
) -> protocol.Upload:
    """Stage an upload from its manifest; then PUT its chunks and commit it."""
    up = service.create(session, request.app.state.settings, caller, partnership_id, body)
    return service.view(session, up)


@router.get("/v1/uploads/{upload_id}", response_model=protocol.Upload)
def get_upload(upload_id: uuid.UUID, session: SessionDep, caller: UploaderKey) -> protocol.Upload:
    """An upload of mine, with the chunks received so far (to resume)."""
    return service.view(session, service.get(session, caller, upload_id))


@router.put(
    "/v1/uploads/{upload_id}/chunks/{n}",
    response_model=protocol.ChunkReceipt,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                protocol.NDJSON: {"schema": {"type": "string"}},
                protocol.BINARY_CHUNK: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def put_chunk(
    upload_id: uuid.UUID,
    n: Annotated[int, Path(ge=0, le=1_000_000)],
    request: Request,
    caller: UploaderKey,
    session: SessionDep,
) -> protocol.ChunkReceipt:
    """One chunk of records, NDJSON or binary (docs/protocol.md §8). Idempotent for equal
    bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    binary = ctype in _BINARY_TYPES
    if not binary and ctype not in _CHUNK_TYPES:
        raise errors.UnsupportedMediaType(
            f"Send chunks as {protocol.NDJSON} or {protocol.BINARY_CHUNK}, "
            f"not '{ctype or 'nothing'}'."
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # the digest in the manifest is over the bytes as sent; a compressed body would
        # be parsed as garbage, so say what is wrong instead
        raise errors.UnsupportedMediaType(
            f"Content-Encoding '{encoding}' is not accepted for chunks: send them "
            "uncompressed (tokens and ciphertext do not compress anyway)."
        )
    from starlette.concurrency import run_in_threadpool

    if session.in_transaction() and session.get_bind().dialect.name == "sqlite":
        # SQLite has one write lock for the whole database, and a transaction takes it at
        # its first statement (BEGIN IMMEDIATE): end the key lookup's before waiting for
        # the body, or a slow upload holds every other writer of every company up.
        await run_in_threadpool(session.commit)
    body = await request.body()
    settings = request.app.state.settings

    chunk, duplicate = await run_in_threadpool(
        service.put_chunk, session, settings, caller, upload_id, n, body, binary=binary
    )
    return protocol.ChunkReceipt(
        upload_id=upload_id,
        n=n,
        records=chunk.records,
        sha256=chunk.sha256.hex(),
        duplicate=duplicate,
    )


@router.post("/v1/uploads/{upload_id}/commit", response_model=protocol.Upload)
def commit_upload(
    upload_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    caller: UploaderKey,
    body: protocol.UploadCommit | None = None,
) -> protocol.Upload:
    """Verify count and digest; replace my previous list atomically; start matching. The
    body gives chunk_count and digest when the manifest left them for the commit."""
    up = service.commit(session, request.app.state.settings, caller, upload_id, body)
    return service.view(session, up)


@router.delete("/v1/uploads/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
def abort_upload(upload_id: uuid.UUID, session: SessionDep, caller: UploaderKey) -> Response:
    """Abort a staged upload and discard what it received."""
    service.abort(session, caller, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/partnerships/{partnership_id}/status", response_model=protocol.PartnershipSyncStatus
)
async def sync_status(
    partnership_id: uuid.UUID, session: SessionDep, caller: ReaderKey
) -> protocol.PartnershipSyncStatus:
    """Per side and population: committed size, time, normalizer version, stale keys, job."""
    # a coroutine that makes one thread-pool trip, the commit included (the most polled
    # endpoint; a `def` route takes more trips: see service/report/router.py)
    return await run_in_threadpool(_sync_status, session, caller, partnership_id)


def _sync_status(
    session: Session, caller: Principal, partnership_id: uuid.UUID
) -> protocol.PartnershipSyncStatus:
    out = sync.sync_status(session, caller, partnership_id)
    finish(session)
    return out
