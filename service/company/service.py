"""Rules for companies (tenants). Companies are created by the operator, not over HTTP."""

from __future__ import annotations

from blindmap.protocol import Role
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import errors
from service.api_key import service as api_key_service
from service.models import Company, utcnow


def create(session: Session, *, slug: str, display_name: str, secret: bytes) -> tuple[Company, str]:
    """Create a company and its first admin key; returns the key's plaintext once."""
    if session.execute(select(Company.id).where(Company.slug == slug)).first():
        raise errors.Conflict(f"A company with slug '{slug}' already exists.")
    company = Company(slug=slug, display_name=display_name, key_epoch=0, created_at=utcnow())
    session.add(company)
    session.flush()
    _, plaintext = api_key_service.issue(
        session,
        company_id=company.id,
        secret=secret,
        name="first admin key",
        role=Role.admin,
        created_by=None,
    )
    return company, plaintext
