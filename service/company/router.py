"""HTTP routes about the calling company."""

from __future__ import annotations

from fastapi import APIRouter

from blindmap import protocol
from blindmap.crypto import encode_public_key
from service.auth import AdminKey, ReaderKey
from service.company import service
from service.db import SessionDep

router = APIRouter(prefix="/v1", tags=["company"])


@router.get("/me", response_model=protocol.Me)
def me(caller: ReaderKey) -> protocol.Me:
    """The company and API key this request authenticates as."""
    return protocol.Me(
        company=protocol.Company.model_validate(caller.company, from_attributes=True),
        api_key=protocol.ApiKey.model_validate(caller.key, from_attributes=True),
    )


@router.put("/me/public-key", response_model=protocol.CompanyKey)
def register_public_key(
    body: protocol.PublicKeyRegister, session: SessionDep, caller: AdminKey
) -> protocol.CompanyKey:
    """Register my company's X25519 public key (a new key bumps `key_epoch`)."""
    c = service.register_public_key(session, caller, body.public_key)
    return protocol.CompanyKey(
        slug=c.slug,
        display_name=c.display_name,
        public_key=encode_public_key(c.public_key) if c.public_key else None,
        key_epoch=c.key_epoch,
    )
