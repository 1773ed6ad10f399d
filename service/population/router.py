"""HTTP routes for /v1/populations."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from blindmap import protocol
from service.auth import AdminKey, ReaderKey
from service.db import SessionDep
from service.population import service

router = APIRouter(prefix="/v1/populations", tags=["populations"])


def _out(pop: object) -> protocol.Population:
    return protocol.Population.model_validate(pop, from_attributes=True)


@router.get("", response_model=protocol.PopulationList)
def list_populations(session: SessionDep, caller: ReaderKey) -> protocol.PopulationList:
    """My populations, by slug."""
    return protocol.PopulationList(
        items=[_out(p) for p in service.list_all(session, caller.company_id)]
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=protocol.Population)
def create_population(
    body: protocol.PopulationCreate, session: SessionDep, caller: AdminKey
) -> protocol.Population:
    """Create a population (a named list such as `customers`)."""
    return _out(service.create(session, caller, body))


@router.get("/{slug}", response_model=protocol.Population)
def get_population(slug: str, session: SessionDep, caller: ReaderKey) -> protocol.Population:
    return _out(service.PopulationRepository(session, caller.company_id).by_slug(slug))


@router.patch("/{slug}", response_model=protocol.Population)
def update_population(
    slug: str, body: protocol.PopulationUpdate, session: SessionDep, caller: AdminKey
) -> protocol.Population:
    """Rename a population or change its kind (its slug is fixed)."""
    return _out(service.update(session, caller, slug, body))


@router.delete("/{slug}", status_code=status.HTTP_204_NO_CONTENT)
def delete_population(slug: str, session: SessionDep, caller: AdminKey) -> Response:
    """Delete a population and, in every partnership, its uploads."""
    service.delete(session, caller, slug)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
