"""disclosures

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:18:23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "disclosures",
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("viewer_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("viewer_slug", sa.String(length=63), nullable=False),
        sa.Column("owner_slug", sa.String(length=63), nullable=False),
        sa.Column("report", sa.String(length=32), nullable=False),
        sa.Column("viewer_population", sa.String(length=63), nullable=True),
        sa.Column("owner_population", sa.String(length=63), nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("policy_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["companies.id"],
            name=op.f("fk_disclosures_owner_id_companies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["partnership_id"],
            ["partnerships.id"],
            name=op.f("fk_disclosures_partnership_id_partnerships"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["viewer_id"],
            ["companies.id"],
            name=op.f("fk_disclosures_viewer_id_companies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("partnership_id", "seq", name=op.f("pk_disclosures")),
    )
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_disclosures_partnership_id_viewer_id_created_at"),
            ["partnership_id", "viewer_id", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disclosures_partnership_id_viewer_id_created_at"))

    op.drop_table("disclosures")
