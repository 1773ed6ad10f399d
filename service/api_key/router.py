"""HTTP routes for /v1/api-keys (admin only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from blindmap import protocol
from service.api_key import service
from service.auth import AdminKey
from service.db import SessionDep

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=protocol.ApiKeyCreated)
def create_api_key(
    body: protocol.ApiKeyCreate, request: Request, session: SessionDep, caller: AdminKey
) -> protocol.ApiKeyCreated:
    """Create a key for my company. The response holds the key itself, shown only once."""
    key, plaintext = service.issue(
        session,
        company_id=caller.company_id,
        secret=request.app.state.settings.hmac_secret,
        name=body.name,
        role=body.role,
        created_by=caller.key,
    )
    return protocol.ApiKeyCreated(
        **protocol.ApiKey.model_validate(key, from_attributes=True).model_dump(), key=plaintext
    )


@router.get("", response_model=protocol.ApiKeyPage)
def list_api_keys(
    session: SessionDep,
    caller: AdminKey,
    include_revoked: bool = False,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> protocol.ApiKeyPage:
    """My company's keys, newest first (never their secrets)."""
    rows, next_cursor = service.list_keys(
        session, caller.company_id, include_revoked=include_revoked, cursor=cursor, limit=limit
    )
    return protocol.ApiKeyPage(
        items=[protocol.ApiKey.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=next_cursor,
    )


@router.delete("/{key_id}", response_model=protocol.ApiKey)
def revoke_api_key(key_id: uuid.UUID, session: SessionDep, caller: AdminKey) -> protocol.ApiKey:
    """Revoke a key; it is refused from its next request on."""
    key = service.revoke(session, caller.key, key_id)
    return protocol.ApiKey.model_validate(key, from_attributes=True)
