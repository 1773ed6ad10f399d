"""Rules for companies (tenants). Companies are created by the operator, not over HTTP."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from blindmap import crypto
from blindmap.protocol import Role
from service import errors
from service.api_key import service as api_key_service
from service.audit import service as audit
from service.auth import Principal
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


def register_public_key(session: Session, caller: Principal, encoded: str) -> Company:
    """Register (or rotate) my X25519 public key; every registration bumps key_epoch.

    Tokens are derived from both partners' keys, so after a rotation every upload of
    every partnership of mine, mine and my partners', needs a re-sync (shown in the
    partnership status)."""
    try:
        raw = crypto.decode_public_key(encoded)
        _refuse_low_order(raw)
    except crypto.CryptoError as exc:
        raise errors.Unprocessable(
            f"Invalid public key: {exc}",
            errors=[{"field": "public_key", "in": "body", "message": str(exc)}],
        ) from None
    company = session.get_one(Company, caller.company_id, with_for_update=True)
    if company.public_key == raw:
        return company  # re-registering the same key is a no-op, not a rotation
    company.public_key = raw
    company.key_epoch += 1
    session.flush()
    audit.record(
        session,
        caller,
        "company.public_key",
        "company",
        company.id,
        details={"key_epoch": company.key_epoch, "fingerprint": crypto.fingerprint(raw)},
    )
    return company


def _refuse_low_order(raw: bytes) -> None:
    # A low-order point makes every shared secret all-zero: partnership keys would be
    # public. OpenSSL refuses the exchange; we refuse the registration.
    try:
        X25519PrivateKey.generate().exchange(crypto.load_public_key(raw))
    except ValueError:
        raise crypto.InvalidPublicKeyError("a low-order point cannot be a public key") from None
