"""match counts and reveal spend

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 14:52:26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reveal_spend",
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.Column("viewer_id", sa.Uuid(), nullable=False),
        sa.Column("hour", UTCDateTime(timezone=True), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["partnership_id"],
            ["partnerships.id"],
            name=op.f("fk_reveal_spend_partnership_id_partnerships"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["viewer_id"],
            ["companies.id"],
            name=op.f("fk_reveal_spend_viewer_id_companies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "partnership_id", "viewer_id", "hour", name=op.f("pk_reveal_spend")
        ),
    )
    op.create_table(
        "match_counts",
        sa.Column("a_upload", sa.Integer(), nullable=False),
        sa.Column("b_upload", sa.Integer(), nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.Column("a_records", sa.Integer(), nullable=False),
        sa.Column("b_records", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["a_upload"],
            ["uploads.num"],
            name=op.f("fk_match_counts_a_upload_uploads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["b_upload"],
            ["uploads.num"],
            name=op.f("fk_match_counts_b_upload_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("a_upload", "b_upload", name=op.f("pk_match_counts")),
    )


def downgrade() -> None:
    op.drop_table("match_counts")
    op.drop_table("reveal_spend")
