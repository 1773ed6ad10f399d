"""matches without foreign keys to uploads; the delete trigger clears them

The match job inserts one row per matched pair (200,000 at 1M x 1M); PostgreSQL checked
both foreign keys of every row with a query each, ~1.2 s of a 4 s job. The row trigger
on `uploads` (0007, 0008) now also deletes the upload's matches, as the cascade did.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DELETES = (
    "    DELETE FROM matches WHERE a_upload = OLD.num OR b_upload = OLD.num;\n"
    "    DELETE FROM staged_tokens WHERE upload_num = OLD.num;\n"
    "    DELETE FROM tokens WHERE upload_num = OLD.num;\n"
    "    DELETE FROM records WHERE upload_num = OLD.num;\n"
)


def _set_trigger(deletes: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION uploads_delete_rows() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$\nBEGIN\n{deletes}    RETURN OLD;\nEND\n$$"
        )
    else:
        op.execute(
            "CREATE TRIGGER uploads_delete_rows AFTER DELETE ON uploads FOR EACH ROW BEGIN\n"
            f"{deletes}END"
        )


def _drop_sqlite_trigger() -> None:
    # SQLite's table rebuild (batch mode) would trip over a trigger naming the tables
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER uploads_delete_rows")


def upgrade() -> None:
    _drop_sqlite_trigger()
    with op.batch_alter_table("matches", table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        batch_op.drop_constraint("fk_matches_a_upload_uploads", type_="foreignkey")
        batch_op.drop_constraint("fk_matches_b_upload_uploads", type_="foreignkey")
    _set_trigger(_DELETES)


def downgrade() -> None:
    _drop_sqlite_trigger()
    with op.batch_alter_table("matches", table_kwargs={"sqlite_with_rowid": False}) as batch_op:
        for side in ("a", "b"):
            batch_op.create_foreign_key(
                f"fk_matches_{side}_upload_uploads",
                "uploads",
                [f"{side}_upload"],
                ["num"],
                ondelete="CASCADE",
            )
    _set_trigger(_DELETES.split("\n", 1)[1])
