"""upload_chunks.ref_prints: 8 bytes per record that the commit checks refs against

A ref must be unique in an upload. The commit checked it with one aggregate over the
upload's rows of `records`: a scan of ~300 MB of sealed payloads at 1M records, 0.5-1.0 s
on the commit's critical path. Each chunk now keeps a print of every ref (its first 16
hex digits, or 8 bytes of BLAKE2b for a ref that does not start with 16 hex digits): the
commit looks for a repeat among the upload's prints (7 MB at 1M) and runs the exact query
only when it finds one (a repeated ref, or two refs that share a print). NULL: received
before this column existed; such an upload takes the exact query. The prints are a
function of refs the escrow stores anyway.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("upload_chunks", sa.Column("ref_prints", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # random bytes do not compress: store them out of line without trying to
        op.execute("ALTER TABLE upload_chunks ALTER COLUMN ref_prints SET STORAGE EXTERNAL")


def downgrade() -> None:
    with op.batch_alter_table("upload_chunks") as batch_op:
        batch_op.drop_column("ref_prints")
