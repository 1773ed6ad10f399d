"""records and tokens without a foreign key to uploads; a delete trigger instead

PostgreSQL checks a foreign key with one query per inserted row: during a chunk COPY
that was more than half of the database's CPU time. Chunks are stored only under a
staged upload row that the request holds locked, so the key adds no safety there;
what it did add, deleting an upload's rows with the upload (population or company
deleted), a row trigger on `uploads` now does on both databases.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 16:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_FUNCTION = """
CREATE FUNCTION uploads_delete_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tokens WHERE upload_num = OLD.num;
    DELETE FROM records WHERE upload_num = OLD.num;
    RETURN OLD;
END
$$
"""
_PG_TRIGGER = (
    "CREATE TRIGGER uploads_delete_rows AFTER DELETE ON uploads "
    "FOR EACH ROW EXECUTE FUNCTION uploads_delete_rows()"
)
_SQLITE_TRIGGER = """
CREATE TRIGGER uploads_delete_rows AFTER DELETE ON uploads FOR EACH ROW BEGIN
    DELETE FROM tokens WHERE upload_num = OLD.num;
    DELETE FROM records WHERE upload_num = OLD.num;
END
"""


def _batch(table: str) -> object:
    # SQLite rebuilds the table; keep it WITHOUT ROWID (clustered on the primary key)
    return op.batch_alter_table(table, table_kwargs={"sqlite_with_rowid": False})


def upgrade() -> None:
    for table in ("records", "tokens"):
        with _batch(table) as batch_op:  # type: ignore[attr-defined]
            batch_op.drop_constraint(f"fk_{table}_upload_num_uploads", type_="foreignkey")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER uploads_delete_rows ON uploads")
        op.execute("DROP FUNCTION uploads_delete_rows()")
    else:
        op.execute("DROP TRIGGER uploads_delete_rows")
    for table in ("records", "tokens"):
        with _batch(table) as batch_op:  # type: ignore[attr-defined]
            batch_op.create_foreign_key(
                f"fk_{table}_upload_num_uploads",
                "uploads",
                ["upload_num"],
                ["num"],
                ondelete="CASCADE",
            )
