"""Rules for populations: a company's named lists."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blindmap import protocol
from service import errors
from service.audit import service as audit
from service.auth import Principal
from service.models import Population, utcnow
from service.repository import TenantRepository


class PopulationRepository(TenantRepository[Population]):
    model = Population
    not_found = "No such population"

    def by_slug(self, slug: str) -> Population:
        obj = self.session.execute(
            self.select().where(Population.slug == slug)
        ).scalar_one_or_none()
        if obj is None:
            raise errors.NotFound(f"{self.not_found}: {slug}")
        return obj


def list_all(session: Session, company_id: uuid.UUID) -> Sequence[Population]:
    repo = PopulationRepository(session, company_id)
    return session.execute(repo.select().order_by(Population.slug)).scalars().all()


def create(session: Session, caller: Principal, body: protocol.PopulationCreate) -> Population:
    repo = PopulationRepository(session, caller.company_id)
    if session.execute(repo.select().where(Population.slug == body.slug)).first():
        raise errors.Conflict(f"You already have a population '{body.slug}'.")
    pop = Population(
        company_id=caller.company_id,
        slug=body.slug,
        display_name=body.display_name or body.slug.replace("-", " ").capitalize(),
        kind=body.kind.value,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            repo.add(pop)
    except IntegrityError:  # a concurrent create of the same slug
        raise errors.Conflict(f"You already have a population '{body.slug}'.") from None
    audit.record(
        session,
        caller,
        "population.create",
        "population",
        pop.id,
        details={"slug": pop.slug, "kind": pop.kind},
    )
    return pop


def update(
    session: Session, caller: Principal, slug: str, body: protocol.PopulationUpdate
) -> Population:
    pop = PopulationRepository(session, caller.company_id).by_slug(slug)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "display_name" in changes:
        pop.display_name = changes["display_name"]
    if "kind" in changes:
        pop.kind = protocol.PopulationKind(changes["kind"]).value
    session.flush()
    audit.record(
        session,
        caller,
        "population.update",
        "population",
        pop.id,
        details={"slug": slug, "changed": sorted(changes)},
    )
    return pop


def delete(session: Session, caller: Principal, slug: str) -> None:
    """Delete a population; its uploads in every partnership go with it (FK cascade)."""
    pop = PopulationRepository(session, caller.company_id).by_slug(slug)
    session.delete(pop)
    session.flush()
    audit.record(session, caller, "population.delete", "population", pop.id, details={"slug": slug})


def slugs_of(session: Session, company_id: uuid.UUID) -> dict[str, Population]:
    rows = session.execute(select(Population).where(Population.company_id == company_id))
    return {p.slug: p for p in rows.scalars()}
