"""The audit trail: one append-only row per mutation. Never holds record data."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from service.auth import Principal
from service.models import ApiKey, AuditEvent, utcnow
from service.repository import TenantRepository


class AuditRepository(TenantRepository[AuditEvent]):
    model = AuditEvent
    not_found = "No such audit event"


def record(
    session: Session,
    actor: Principal | None,
    action: str,
    target_type: str,
    target_id: object = None,
    *,
    company_id: uuid.UUID | None = None,
    partnership_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append an event to `company_id`'s trail (default: the actor's company)."""
    owner = company_id or (actor.company_id if actor else None)
    if owner is None:
        raise ValueError("an audit event needs a company")
    session.add(
        AuditEvent(
            company_id=owner,
            actor_key_id=actor.key.id if actor and actor.company_id == owner else None,
            actor_key_prefix=actor.key.prefix if actor else None,
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            partnership_id=partnership_id,
            details=details or {},
            created_at=utcnow(),
        )
    )


def record_raw(
    session: Session,
    company_id: uuid.UUID,
    actor_key: ApiKey | None,
    action: str,
    target_type: str,
    target_id: object = None,
    *,
    details: dict[str, Any] | None = None,
) -> None:
    """`record` for callers that hold a key row rather than a Principal (or none: the
    operator's bootstrap)."""
    session.add(
        AuditEvent(
            company_id=company_id,
            actor_key_id=actor_key.id if actor_key else None,
            actor_key_prefix=actor_key.prefix if actor_key else None,
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            details=details or {},
            created_at=utcnow(),
        )
    )


def page(
    session: Session, company_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[Sequence[AuditEvent], str | None]:
    repo = AuditRepository(session, company_id)
    return repo.page(repo.select(), cursor=cursor, limit=limit)
