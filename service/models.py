"""SQLAlchemy 2 models. The migrations in migrations/versions/ must agree (alembic check)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Company(Base):
    __tablename__ = "companies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    key_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


ROLES = ("reader", "uploader", "admin")


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('reader', 'uploader', 'admin')", name="role"),
        Index(None, "company_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    # Shown to humans to recognise a key; the secret part is never stored.
    prefix: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256(settings.secret_key, full key): lookups go by this, so a DB dump holds
    # no usable key.
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


POPULATION_KINDS = ("customers", "opportunities", "prospects", "partners", "other")


class Population(Base):
    """A named list a company keeps (customers, open opportunities, ...)."""

    __tablename__ = "populations"
    __table_args__ = (
        UniqueConstraint("company_id", "slug"),
        CheckConstraint(
            "kind IN ('customers', 'opportunities', 'prospects', 'partners', 'other')",
            name="kind",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


PARTNERSHIP_STATUSES = ("pending", "active", "ended")


class Partnership(Base):
    """Two companies that agreed to map accounts. Ended ones stay as a tombstone (ids,
    status, times, no record data) so that audit and disclosure entries keep a target."""

    __tablename__ = "partnerships"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'active', 'ended')", name="status"),
        CheckConstraint("inviter_id <> invitee_id", name="not_self"),
        Index(None, "inviter_id"),
        Index(None, "invitee_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    inviter_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    invitee_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # "<smaller id>:<larger id>" while not ended, NULL once ended: a plain unique
    # constraint then forbids two live partnerships of one pair on both databases.
    live_pair: Mapped[str | None] = mapped_column(String(80), unique=True)
    inviter_epoch: Mapped[int | None] = mapped_column(Integer)
    invitee_epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL")
    )


class Policy(Base):
    """One immutable version of what `owner` shares with the partner of a partnership."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("partnership_id", "owner_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    partnership_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("partnerships.id", ondelete="CASCADE")
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Append-only record of a mutation: who (company, key), what, when. Holds ids and
    names, never record data, tokens or keys."""

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "company_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    actor_key_prefix: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    partnership_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


UPLOAD_STATUSES = ("staged", "committed", "superseded", "aborted")


class Upload(Base):
    """One list sent by one company for one population in one partnership.

    `num` is the compact internal key that records, tokens and matches carry (an
    integer joins and indexes far better than a UUID); `id` is the public one.
    """

    __tablename__ = "uploads"
    __table_args__ = (
        CheckConstraint(
            "status IN ('staged', 'committed', 'superseded', 'aborted')", name="status"
        ),
        Index(None, "partnership_id", "company_id", "population_id", "status"),
        Index(None, "status", "created_at"),
    )

    num: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    partnership_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("partnerships.id", ondelete="CASCADE")
    )
    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    population_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("populations.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(16), default="staged")
    normalizer_version: Mapped[str] = mapped_column(String(64))
    token_kinds: Mapped[list[str]] = mapped_column(JSON)
    sealed_fields: Mapped[list[str]] = mapped_column(JSON)
    my_epoch: Mapped[int] = mapped_column(Integer)
    partner_epoch: Mapped[int] = mapped_column(Integer)
    record_count: Mapped[int] = mapped_column(Integer)
    # A manifest may leave chunk_count and digest for the commit (the SDK sends chunks as
    # it builds them): until then they hold 0 and "" (DEFERRED), which keeps the columns
    # NOT NULL and spares SQLite a rebuild of `uploads` (which its foreign keys cascade
    # from).
    chunk_count: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    confirm_shrink: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def deferred(self) -> bool:
        """Whether chunk_count and digest are still to come with the commit."""
        return self.digest == DEFERRED


DEFERRED = ""
"""`uploads.digest` of a manifest that leaves chunk_count and digest for the commit."""


class UploadChunk(Base):
    """A received chunk: its digest makes a re-send idempotent and the commit verifiable."""

    __tablename__ = "upload_chunks"

    upload_num: Mapped[int] = mapped_column(
        ForeignKey("uploads.num", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    records: Mapped[int] = mapped_column(Integer)
    # The chunk's smallest and largest token key (kind byte + value): the match job
    # merges index scans when an upload's chunks follow one another (migration 0011).
    token_min: Mapped[bytes | None] = mapped_column(LargeBinary(17))
    token_max: Mapped[bytes | None] = mapped_column(LargeBinary(17))
    # 8 bytes per record, a print of its ref (service/upload/ingest.py `ref_prints`): the
    # commit looks for repeated refs in these instead of in `records` (migration 0012).
    # Deferred: 80 KB per 10k-record chunk, read by the commit only.
    ref_prints: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


# Records, tokens and matches are written in bulk (COPY / executemany) through Core.
# records.upload_num and tokens.upload_num carry no foreign key: PostgreSQL checks a
# foreign key with one SPI query per inserted row, which was more than half of its CPU
# time during ingest. Chunks are only stored under a staged upload row that the request
# holds locked (service/upload/service.py), and a trigger on `uploads` (migration 0007)
# deletes an upload's records and tokens with it, as the cascade did.
records = Table(
    "records",
    Base.metadata,
    Column("upload_num", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("partnership_id", Uuid, nullable=False),
    Column("ref", String(64), nullable=False),
    Column("self_sealed", LargeBinary, nullable=False),
    Column("partner_sealed", LargeBinary),
    # refs are unique within an upload, checked once at commit (one GROUP BY) rather than
    # by a unique index that every chunk would update in random order
    sqlite_with_rowid=False,
)

# The primary key (upload_num, kind, value, seq) is also the join index of the match.
tokens = Table(
    "tokens",
    Base.metadata,
    Column("upload_num", Integer, primary_key=True, autoincrement=False),
    Column("kind", SmallInteger, primary_key=True, autoincrement=False),
    Column("value", LargeBinary(16), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("partnership_id", Uuid, nullable=False),
    sqlite_with_rowid=False,  # clustered on the key: the join reads it in order
)

# SQLite only: a staged upload's tokens, in arrival order (its key is the order chunks
# append in). The commit moves them into `tokens` sorted by the join key: inserting a
# chunk's random tokens straight into `tokens` dirtied most of the upload's index pages
# again in every chunk's commit, which grows with the list (10k-record chunks: 35k
# records/s at 1M). PostgreSQL COPYs into `tokens` directly and leaves this empty.
staged_tokens = Table(
    "staged_tokens",
    Base.metadata,
    Column("upload_num", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", SmallInteger, primary_key=True, autoincrement=False),
    Column("value", LargeBinary(16), primary_key=True),
    sqlite_with_rowid=False,
)

# One row per matched pair of records; side a is the inviter's, side b the invitee's.
# No foreign keys either (the match job inserts 200k rows at 1M x 1M; two per-row checks
# were ~1.2 s of it on PostgreSQL); the delete trigger on `uploads` clears them.
matches = Table(
    "matches",
    Base.metadata,
    Column("a_upload", Integer, primary_key=True, autoincrement=False),
    Column("a_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("b_upload", Integer, primary_key=True, autoincrement=False),
    Column("b_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("partnership_id", Uuid, nullable=False),
    Index(None, "b_upload", "b_seq"),
    sqlite_with_rowid=False,
)

# Without the foreign keys, declare the dependency for Base.metadata.sorted_tables:
# deleting children before parents (partnership purge, test clean-up) keeps its order.
_uploads_table = Base.metadata.tables["uploads"]
for _child in (records, tokens, staged_tokens, matches):
    _child.add_is_dependent_on(_uploads_table)

# Distinct matched records per pair of uploads, per side, written by the match job:
# the summary report reads one row per cell instead of counting matches. A row also says
# the pair's matches are complete (they are written in one transaction).
match_counts = Table(
    "match_counts",
    Base.metadata,
    Column("a_upload", ForeignKey("uploads.num", ondelete="CASCADE"), primary_key=True),
    Column("b_upload", ForeignKey("uploads.num", ondelete="CASCADE"), primary_key=True),
    Column("partnership_id", Uuid, nullable=False),
    Column("a_records", Integer, nullable=False),
    Column("b_records", Integer, nullable=False),
    # bit mask of the token kind codes the pair was joined on; NULL: unknown (before 0010)
    Column("kinds", SmallInteger),
)

JOB_STATUSES = ("queued", "running", "done", "failed")


class Job(Base):
    """Background work (matching a committed upload, freeing a replaced one), claimed by workers."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="status"),
        Index(None, "status", "run_after"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    partnership_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("partnerships.id", ondelete="CASCADE"), index=True
    )
    upload_num: Mapped[int | None] = mapped_column(
        ForeignKey("uploads.num", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Disclosure(Base):
    """One release of partner data to a viewer, hash-chained per partnership
    (blindmap.disclosure). Holds counts and names, never record data; it outlives the
    partnership so both sides can still read who saw what."""

    __tablename__ = "disclosures"
    __table_args__ = (Index(None, "partnership_id", "viewer_id", "created_at"),)

    partnership_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("partnerships.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    viewer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    viewer_slug: Mapped[str] = mapped_column(String(63))
    owner_slug: Mapped[str] = mapped_column(String(63))
    report: Mapped[str] = mapped_column(String(32))
    viewer_population: Mapped[str | None] = mapped_column(String(63))
    owner_population: Mapped[str | None] = mapped_column(String(63))
    records: Mapped[int] = mapped_column(Integer)
    policy_versions: Mapped[dict[str, int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class IdempotencyKey(Base):
    """A POST seen with an `Idempotency-Key` (service/idempotency.py): in flight while
    `status_code` is NULL, then the saved response, kept until `expires_at`. Holds a hash
    of the request, never its body; a response that carried a secret (a new API key) is
    kept without its body (`shown_once`)."""

    __tablename__ = "idempotency_keys"

    company_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    path: Mapped[str] = mapped_column(String(1024))
    owner: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSON)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    shown_once: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RevealSpend(Base):
    """Partner records released to a viewer, per partnership and hour: the daily reveal
    budget sums at most 25 rows instead of scanning the disclosure log."""

    __tablename__ = "reveal_spend"

    partnership_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("partnerships.id", ondelete="CASCADE"), primary_key=True
    )
    viewer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    records: Mapped[int] = mapped_column(Integer, default=0)
