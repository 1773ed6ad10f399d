"""uploads records tokens matches jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 14:03:42
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("num", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.Column("company_id", sa.Uuid(), nullable=False),
        sa.Column("population_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("normalizer_version", sa.String(length=64), nullable=False),
        sa.Column("token_kinds", sa.JSON(), nullable=False),
        sa.Column("sealed_fields", sa.JSON(), nullable=False),
        sa.Column("my_epoch", sa.Integer(), nullable=False),
        sa.Column("partner_epoch", sa.Integer(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("confirm_shrink", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("committed_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('staged', 'committed', 'superseded', 'aborted')",
            name=op.f("ck_uploads_status"),
        ),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_uploads_company_id_companies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["partnership_id"],
            ["partnerships.id"],
            name=op.f("fk_uploads_partnership_id_partnerships"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["population_id"],
            ["populations.id"],
            name=op.f("fk_uploads_population_id_populations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("num", name=op.f("pk_uploads")),
        sa.UniqueConstraint("id", name=op.f("uq_uploads_id")),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_uploads_partnership_id_company_id_population_id_status"),
            ["partnership_id", "company_id", "population_id", "status"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_uploads_status_created_at"), ["status", "created_at"], unique=False
        )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=True),
        sa.Column("upload_num", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", UTCDateTime(timezone=True), nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_jobs_status")
        ),
        sa.ForeignKeyConstraint(
            ["partnership_id"],
            ["partnerships.id"],
            name=op.f("fk_jobs_partnership_id_partnerships"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["upload_num"],
            ["uploads.num"],
            name=op.f("fk_jobs_upload_num_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_partnership_id"), ["partnership_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_status_run_after"), ["status", "run_after"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_jobs_upload_num"), ["upload_num"], unique=False)

    op.create_table(
        "matches",
        sa.Column("a_upload", sa.Integer(), nullable=False),
        sa.Column("a_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("b_upload", sa.Integer(), nullable=False),
        sa.Column("b_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["a_upload"],
            ["uploads.num"],
            name=op.f("fk_matches_a_upload_uploads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["b_upload"],
            ["uploads.num"],
            name=op.f("fk_matches_b_upload_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("a_upload", "a_seq", "b_upload", "b_seq", name=op.f("pk_matches")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_matches_b_upload_b_seq"), ["b_upload", "b_seq"], unique=False
        )

    op.create_table(
        "records",
        sa.Column("upload_num", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("self_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("partner_sealed", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["upload_num"],
            ["uploads.num"],
            name=op.f("fk_records_upload_num_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_num", "seq", name=op.f("pk_records")),
        sa.UniqueConstraint("upload_num", "ref", name=op.f("uq_records_upload_num_ref")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tokens",
        sa.Column("upload_num", sa.Integer(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.LargeBinary(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("partnership_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_num"],
            ["uploads.num"],
            name=op.f("fk_tokens_upload_num_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_num", "kind", "value", "seq", name=op.f("pk_tokens")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "upload_chunks",
        sa.Column("upload_num", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_num"],
            ["uploads.num"],
            name=op.f("fk_upload_chunks_upload_num_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_num", "n", name=op.f("pk_upload_chunks")),
    )


def downgrade() -> None:
    op.drop_table("upload_chunks")
    op.drop_table("tokens")
    op.drop_table("records")
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matches_b_upload_b_seq"))

    op.drop_table("matches")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_upload_num"))
        batch_op.drop_index(batch_op.f("ix_jobs_status_run_after"))
        batch_op.drop_index(batch_op.f("ix_jobs_partnership_id"))

    op.drop_table("jobs")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_uploads_partnership_id_company_id_population_id_status"))

    op.drop_table("uploads")
