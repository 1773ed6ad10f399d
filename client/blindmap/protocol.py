"""Wire models of the HTTP API, shared by the SDK and the service.

Request bodies forbid unknown fields, so a typo is a 422 naming the field instead of
being silently ignored.
"""

from __future__ import annotations

import binascii
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Bytes on the wire (tokens, sealed payloads) are base64url without padding.
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def b64url(raw: bytes) -> str:
    """base64url without padding, as the protocol writes bytes (C codec, no `base64` layers)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """base64url, padding optional → bytes; binascii.Error/ValueError on anything else."""
    raw = text.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4)
    return binascii.a2b_base64(raw, strict_mode=True)


class Role(StrEnum):
    """API-key roles, weakest first; each includes what the ones before it may do."""

    reader = "reader"
    uploader = "uploader"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.reader: 0, Role.uploader: 1, Role.admin: 2}

Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)
]
# Not only spaces, and no control characters (PostgreSQL text cannot hold NUL: a name
# with one was a 500 there, found by schemathesis); the schema says both.
_NO_CONTROLS = r"[^\x00-\x1f\x7f]"
DisplayName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=200,
        pattern=rf"^{_NO_CONTROLS}*[^\s\x00-\x1f\x7f]{_NO_CONTROLS}*$",
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Company(_Response):
    id: uuid.UUID
    slug: str
    display_name: str
    key_epoch: int = 0


class ApiKeyCreate(_Request):
    name: DisplayName
    role: Role


class ApiKey(_Response):
    id: uuid.UUID
    name: str
    role: Role
    prefix: str = Field(description="First characters of the key, for recognising it")
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself. Shown once; store it now.")


class ApiKeyPage(_Response):
    items: list[ApiKey]
    next_cursor: str | None = None


class Me(_Response):
    company: Company
    api_key: ApiKey


class PublicKeyRegister(_Request):
    public_key: str = Field(description="X25519 public key, 43 characters of base64url")


class CompanyKey(_Response):
    """A company's registered public key (absent until `blindmap init --register`)."""

    slug: str
    display_name: str
    public_key: str | None = None
    key_epoch: int = 0


class PopulationKind(StrEnum):
    customers = "customers"
    opportunities = "opportunities"
    prospects = "prospects"
    partners = "partners"
    other = "other"


class PopulationCreate(_Request):
    slug: Slug
    display_name: DisplayName | None = None
    kind: PopulationKind


class PopulationUpdate(_Request):
    display_name: DisplayName | None = None
    kind: PopulationKind | None = None


class Population(_Response):
    id: uuid.UUID
    slug: str
    display_name: str
    kind: PopulationKind
    created_at: datetime


class PopulationList(_Response):
    items: list[Population]


class PartnershipStatus(StrEnum):
    pending = "pending"
    active = "active"
    ended = "ended"


class PartnershipCreate(_Request):
    partner: Slug = Field(description="Slug of the company to invite")


class Party(CompanyKey):
    """One side of a partnership, as both sides see it."""

    epoch_at_acceptance: int | None = None
    key_changed: bool = Field(
        False,
        description="The key was rotated since acceptance: tokens derived from the old "
        "key no longer match, so both sides' uploads need a re-sync",
    )


class Partnership(_Response):
    id: uuid.UUID
    status: PartnershipStatus
    my_role: str = Field(description="inviter or invitee")
    me: Party
    partner: Party
    needs_resync: bool = False
    created_at: datetime
    accepted_at: datetime | None = None
    ended_at: datetime | None = None


class PartnershipList(_Response):
    items: list[Partnership]


class DeletionReceipt(_Response):
    partnership_id: uuid.UUID
    ended_at: datetime
    deleted: dict[str, int] = Field(description="Rows deleted per table")


class AuditEvent(_Response):
    id: uuid.UUID
    action: str
    target_type: str
    target_id: str | None = None
    partnership_id: uuid.UUID | None = None
    actor_key_prefix: str | None = None
    details: dict[str, object] = Field(default_factory=dict)
    created_at: datetime


class AuditPage(_Response):
    items: list[AuditEvent]
    next_cursor: str | None = None


class PolicyVersion(_Response):
    """One immutable version of the policy `owner` applies to this partnership.

    `document` is a `blindmap.policy.Policy` as JSON (kept untyped here so the wire
    models do not depend on the policy module)."""

    partnership_id: uuid.UUID
    owner: str
    version: int
    document: dict[str, Any]
    created_at: datetime


class SharedPopulation(_Response):
    slug: str
    display_name: str
    kind: PopulationKind
    share: str = Field(description="count, overlap or full")
    fields: list[str] = Field(default_factory=list)


class PartnerPolicy(_Response):
    """What my partner shares with me under its current policy (transparency): only the
    populations I may see; hidden ones are not even named."""

    partnership_id: uuid.UUID
    owner: str
    version: int
    populations: list[SharedPopulation]
    min_count: int
    min_population: int
    reciprocal: bool
    match_on: list[str]


# -- uploads (docs/protocol.md §8) -----------------------------------------------------------
TOKEN_BYTES = 16
MAX_TOKENS_PER_RECORD = 8
MAX_REF_CHARS = 64
NDJSON = "application/x-ndjson"
# Largest `limit` of a report page (overlaps, white space); the SDK exports in pages this big.
MAX_REPORT_PAGE = 10_000
BINARY_CHUNK = "application/vnd.blindmap.chunk+binary"
"""Compact chunk format (docs/protocol.md §8.3): raw bytes, length-prefixed, no base64."""
BINARY_CHUNK_MAGIC = b"BMC1"
BINARY_KIND_CODES = {"domain": 0, "name": 1}
"""Token kind → its one-byte code in binary chunks."""
SDK_REF_CHARS = 32
"""Length of the refs the SDK writes (32 hex digits of an HMAC, crypto.RefMaker). Any ref
up to MAX_REF_CHARS is valid; the escrow's parser reads a record with a ref this long and
one token in one step, the SDK writes its head in one."""
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_DIGEST_DOC = (
    "SHA-256 over the concatenated SHA-256 digests of the chunk bodies, in chunk order "
    "(lowercase hex)"
)


class TokenKind(StrEnum):
    domain = "domain"
    name = "name"


class KeyEpochs(_Request):
    """The key epochs the tokens were derived with; both must be current at upload."""

    mine: int = Field(ge=0)
    partner: int = Field(ge=0)


class UploadCreate(_Request):
    """Manifest of an upload: what is coming, so that commit can verify it all arrived."""

    population: Slug
    normalizer_version: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=rf"^{_NO_CONTROLS}+$")
    ]
    token_kinds: list[TokenKind] = Field(min_length=1, max_length=2)
    sealed_fields: list[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]] = (
        Field(default_factory=list, max_length=32, description="Partner-sealed field names")
    )
    key_epochs: KeyEpochs
    record_count: int = Field(ge=0, description="Records in all chunks together")
    chunk_count: int | None = Field(
        None,
        ge=0,
        description="Chunks numbered 0..chunk_count-1; null: given at the commit (with the "
        "digest), so that chunks can be sent while later ones are still being built",
    )
    digest: Sha256Hex | None = Field(
        None, description=f"{_DIGEST_DOC}; null exactly when chunk_count is"
    )
    confirm_shrink: bool = Field(
        False, description="Allow replacing a list with a much smaller (or empty) one"
    )


class UploadCommit(_Request):
    """The end of a manifest that left `chunk_count` and `digest` for the commit (or the
    same values again, which are then checked against the manifest's)."""

    chunk_count: int = Field(ge=0, description="Chunks numbered 0..chunk_count-1")
    digest: Sha256Hex = Field(description=_DIGEST_DOC)


class UploadStatus(StrEnum):
    staged = "staged"
    committed = "committed"
    superseded = "superseded"
    aborted = "aborted"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class Upload(_Response):
    id: uuid.UUID
    partnership_id: uuid.UUID
    population: str
    status: UploadStatus
    normalizer_version: str
    token_kinds: list[TokenKind]
    sealed_fields: list[str]
    key_epochs: dict[str, int]
    record_count: int
    chunk_count: int | None = Field(
        None, description="null until the commit when the manifest left it for the commit"
    )
    received_chunks: list[int] = Field(default_factory=list)
    received_records: int = 0
    created_at: datetime
    committed_at: datetime | None = None
    match_job: JobState | None = None


class ChunkReceipt(_Response):
    upload_id: uuid.UUID
    n: int
    records: int
    sha256: str
    duplicate: bool = Field(False, description="The same chunk had already been received")


class PopulationSync(_Response):
    """One side's committed list for one population, as the status shows it."""

    population: str
    kind: PopulationKind | None = None
    records: int
    committed_at: datetime
    normalizer_version: str
    stale_keys: bool = Field(description="Tokens derived with a key that was since rotated")
    match_job: JobState | None = None


class PartnershipSyncStatus(_Response):
    partnership_id: uuid.UUID
    mine: list[PopulationSync]
    partner: list[PopulationSync] = Field(
        description="The partner's populations I may see (at least `count`)"
    )
    normalizer_mismatch: bool = False
    warnings: list[str] = Field(default_factory=list)


# -- reports (DESIGN §6) ----------------------------------------------------------------------
class PolicyVersions(_Response):
    """The policy versions that produced a report: mine and the partner's."""

    mine: int
    partner: int


class ReportPopulation(_Response):
    slug: str
    display_name: str | None = None
    kind: PopulationKind | None = None
    records: int | None = Field(None, description="Committed list size (partner's: if shared)")


class SummaryCell(_Response):
    mine: str = Field(description="My population")
    theirs: str = Field(description="The partner's population")
    matched: int | None = Field(
        description="My records in `mine` that match the partner's `theirs`; null when "
        "suppressed (`display` says why)"
    )
    display: str = Field(description="What to show: the count, '<k', or '—' (my list too small)")


class SummaryReport(_Response):
    partnership_id: uuid.UUID
    generated_at: datetime
    mine: list[ReportPopulation]
    theirs: list[ReportPopulation] = Field(description="The partner's populations I may see")
    cells: list[SummaryCell]
    min_count: int
    min_population: int
    policy_versions: PolicyVersions


class PartnerRecord(_Response):
    """A partner record released to me. `ref` is the partner's pseudonymous ref: it is
    the AAD of `sealed`, so it is needed to open it (docs/protocol.md §9)."""

    population: str
    ref: str
    sealed: str | None = Field(None, description="base64url partner-sealed payload")
    fields: list[str] = Field(default_factory=list, description="Field names inside `sealed`")
    withheld: str | None = Field(None, description="Why `sealed` is not included")


class OverlapItem(_Response):
    ref: str = Field(description="My ref")
    population: str = Field(description="My population")
    self_sealed: str = Field(description="base64url, sealed with my self key")
    partner: list[PartnerRecord]


class OverlapPage(_Response):
    partnership_id: uuid.UUID
    items: list[OverlapItem]
    next_cursor: str | None = None
    policy_versions: PolicyVersions


class OverlapCursors(_Response):
    """Where each page of an overlaps report starts, at `limit` records per page: the
    cursor of page k (the first is null), to fetch pages side by side."""

    partnership_id: uuid.UUID
    items: int = Field(description="Records of mine in the report")
    limit: int
    cursors: list[str | None]
    policy_versions: PolicyVersions


class WhiteSpacePage(_Response):
    partnership_id: uuid.UUID
    items: list[PartnerRecord]
    next_cursor: str | None = None
    policy_versions: PolicyVersions


class LookupToken(_Request):
    kind: TokenKind = TokenKind.domain
    value: str = Field(
        description="base64url of the 16-byte token, unpadded",
        pattern=r"^[A-Za-z0-9_-]{21}[AQgw]$",
    )


class LookupRequest(_Request):
    tokens: list[LookupToken] = Field(min_length=1, max_length=100)


class LookupResult(_Response):
    kind: TokenKind
    value: str
    partner: list[PartnerRecord]


class LookupResponse(_Response):
    partnership_id: uuid.UUID
    results: list[LookupResult]
    policy_versions: PolicyVersions


class Disclosure(_Response):
    """One release of data, chained by hash to the previous entry of the partnership."""

    seq: int
    partnership_id: uuid.UUID
    viewer: str
    owner: str
    report: str
    viewer_population: str | None = None
    owner_population: str | None = None
    records: int
    policy_versions: dict[str, int]
    created_at: datetime
    prev_hash: str
    hash: str


class DisclosurePage(_Response):
    items: list[Disclosure]
    next_cursor: str | None = None
