"""match_counts.kinds: the token kinds a pair of uploads was matched on

Both companies' commits queue a match job, and when both lists are committed before the
first job runs (two companies syncing at the same time), both jobs joined the same pair
of uploads: at 1M x 1M on PostgreSQL 2.0 s each. A committed upload never changes, so a
pair already matched on the same kinds is kept as it is; the kinds are recorded to tell
(a policy enabling name matching in between changes them). NULL: matched before this
column existed, always recomputed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("match_counts", sa.Column("kinds", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("match_counts") as batch_op:
        batch_op.drop_column("kinds")
