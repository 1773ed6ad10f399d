"""upload_chunks.token_min / token_max: the smallest and largest token key of a chunk

A token key is the kind byte followed by the 16-byte value, the order of the `tokens`
index within an upload. The SDK sends an upload's records sorted by domain token, so its
chunks' key ranges follow one another and the tokens' heap is in index order; the match
job then merges the two lists' index scans (heap reads in order) instead of hashing one
of them (1M x 1M: 0.97 s instead of 1.3-1.4 s, `python -m bench.match_join`). Any
other order keeps the hash join (the merge would read the heap at random: 5.8 s). NULL:
received before this column existed, never taken for ordered. The escrow holds every
token anyway; the range adds nothing it could not compute.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("upload_chunks", sa.Column("token_min", sa.LargeBinary(17), nullable=True))
    op.add_column("upload_chunks", sa.Column("token_max", sa.LargeBinary(17), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upload_chunks") as batch_op:
        batch_op.drop_column("token_max")
        batch_op.drop_column("token_min")
