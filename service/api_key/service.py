"""Rules for API keys: who may create which role, revocation, listing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from blindmap.protocol import Role
from service import auth, errors
from service.audit import service as audit
from service.models import ApiKey, utcnow
from service.repository import TenantRepository


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    not_found = "No such API key"


def issue(
    session: Session,
    *,
    company_id: uuid.UUID,
    secret: bytes,
    name: str,
    role: Role,
    created_by: ApiKey | None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored."""
    if created_by is not None and role.rank > Role(created_by.role).rank:
        raise errors.Forbidden(
            f"A '{created_by.role}' key cannot create a '{role.value}' key.",
            required_role=role.value,
        )
    plaintext = auth.generate_key()
    key = ApiKey(
        company_id=company_id,
        name=name,
        role=role.value,
        prefix=auth.display_prefix(plaintext),
        secret_hash=auth.hash_key(secret, plaintext),
        created_by_id=created_by.id if created_by else None,
        created_at=utcnow(),
    )
    ApiKeyRepository(session, company_id).add(key)
    audit.record_raw(
        session,
        company_id,
        created_by,
        "api_key.create",
        "api_key",
        key.id,
        details={"role": role.value, "prefix": key.prefix},
    )
    return key, plaintext


def list_keys(
    session: Session,
    company_id: uuid.UUID,
    *,
    include_revoked: bool,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[ApiKey], str | None]:
    repo = ApiKeyRepository(session, company_id)
    stmt = repo.select()
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return repo.page(stmt, cursor=cursor, limit=limit)


def revoke(session: Session, caller: ApiKey, key_id: uuid.UUID) -> ApiKey:
    """Revoke a key of the caller's company; takes effect on its next request. Idempotent."""
    key = ApiKeyRepository(session, caller.company_id).get(key_id, for_update=True)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
        audit.record_raw(
            session,
            caller.company_id,
            caller,
            "api_key.revoke",
            "api_key",
            key.id,
            details={"prefix": key.prefix},
        )
    return key
