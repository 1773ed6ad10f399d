"""staged_tokens (SQLite staging); records without the unique (upload_num, ref) index

Two indexes took their inserts in random order in every chunk: the unique index on
(upload_num, ref) and, on SQLite, the primary key of `tokens`. SQLite writes every page
a transaction dirtied at its commit, so each chunk rewrote most of the upload's index
pages and ingest slowed down as the list grew (10k-record chunks: 35k records/s at 1M).
Refs are now checked for uniqueness once at commit, and on SQLite tokens wait in
`staged_tokens` (appended in arrival order) until the commit moves them into `tokens`
sorted by key. The delete trigger of 0007 also clears `staged_tokens`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 16:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_DELETES_0007 = (
    "    DELETE FROM tokens WHERE upload_num = OLD.num;\n"
    "    DELETE FROM records WHERE upload_num = OLD.num;\n"
)
_DELETES_0008 = (
    "    DELETE FROM staged_tokens WHERE upload_num = OLD.num;\n"
    "    DELETE FROM tokens WHERE upload_num = OLD.num;\n"
    "    DELETE FROM records WHERE upload_num = OLD.num;\n"
)


def _function(deletes: str) -> str:
    return (
        "CREATE OR REPLACE FUNCTION uploads_delete_rows() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$\nBEGIN\n{deletes}    RETURN OLD;\nEND\n$$"
    )


def _sqlite_trigger(deletes: str) -> str:
    return (
        "CREATE TRIGGER uploads_delete_rows AFTER DELETE ON uploads FOR EACH ROW BEGIN\n"
        f"{deletes}END"
    )


def _drop_sqlite_trigger() -> None:
    # SQLite's table rebuild (batch mode) renames `records`; a trigger naming it fails that
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER uploads_delete_rows")


def _set_trigger(deletes: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(deletes))
    else:
        op.execute(_sqlite_trigger(deletes))


def upgrade() -> None:
    _drop_sqlite_trigger()
    with op.batch_alter_table("records", table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        batch_op.drop_constraint("uq_records_upload_num_ref", type_="unique")
    op.create_table(
        "staged_tokens",
        sa.Column("upload_num", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.LargeBinary(length=16), nullable=False),
        sa.PrimaryKeyConstraint(
            "upload_num", "seq", "kind", "value", name=op.f("pk_staged_tokens")
        ),
        sqlite_with_rowid=False,
    )
    _set_trigger(_DELETES_0008)


def downgrade() -> None:
    _drop_sqlite_trigger()
    op.drop_table("staged_tokens")
    with op.batch_alter_table("records", table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        batch_op.create_unique_constraint("uq_records_upload_num_ref", ["upload_num", "ref"])
    _set_trigger(_DELETES_0007)
