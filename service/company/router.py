"""HTTP routes about the calling company."""

from __future__ import annotations

from blindmap import protocol
from fastapi import APIRouter

from service.auth import ReaderKey

router = APIRouter(prefix="/v1", tags=["company"])


@router.get("/me", response_model=protocol.Me)
def me(caller: ReaderKey) -> protocol.Me:
    """The company and API key this request authenticates as."""
    return protocol.Me(
        company=protocol.Company.model_validate(caller.company, from_attributes=True),
        api_key=protocol.ApiKey.model_validate(caller.key, from_attributes=True),
    )
