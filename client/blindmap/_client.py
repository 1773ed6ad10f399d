"""The SDK's HTTP client: auth, retries with backoff, typed errors."""

from __future__ import annotations

import ipaddress
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from blindmap import binary_pages, protocol
from blindmap._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BlindmapError,
    NotFoundError,
    from_response,
)

if TYPE_CHECKING:
    from blindmap.policy import Policy

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
_RETRY_STATUSES = frozenset({429, 503})
_MAX_RETRY_AFTER = 60.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _refuse_plain_http(url: str) -> None:
    """The API key must not cross a network in clear: `http://` only to this machine."""
    u = httpx.URL(url)
    if u.scheme == "http" and u.host != "localhost":
        try:
            loopback = ipaddress.ip_address(u.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BlindmapError(
                f"refusing to send the API key in clear to {u.host}: use https://{u.host} "
                "(BLINDMAP_URL / --url; plain http:// is for localhost only)"
            )


class Client:
    """A connection to a Blindmap escrow.

    `api_key` falls back to `BLINDMAP_API_KEY`, `base_url` to `BLINDMAP_URL`; `http://`
    is refused unless to a loopback address. Pass `http_client` to supply your own
    `httpx.Client` (tests pass the app's TestClient); its transport is then yours.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        http_client: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("BLINDMAP_API_KEY")
        if not self.api_key:
            raise BlindmapError(
                "no API key: pass api_key=... or set BLINDMAP_API_KEY "
                "(an admin creates one with `blindmap keys create`)"
            )
        url = base_url or os.environ.get("BLINDMAP_URL") or DEFAULT_BASE_URL
        if http_client is None:
            _refuse_plain_http(url)
        self.base_url = url.rstrip("/")
        self.key_file = key_file
        self.max_retries = max_retries
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the key
        return f"Client(base_url={self.base_url!r})"

    # -- transport ---------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying connection errors, 429 and 503 with backoff.

        Every POST carries an `Idempotency-Key` (a fresh uuid4 unless the caller gives
        one), the same on each retry: the escrow replays the first response instead of
        running the request twice, which is what makes retrying a POST safe.
        """
        hdrs = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        if headers:
            hdrs.update(headers)
        idempotent = any(k.lower() == IDEMPOTENCY_HEADER.lower() for k in hdrs)
        if method.upper() == "POST" and not idempotent:
            hdrs[IDEMPOTENCY_HEADER] = str(uuid.uuid4())
            idempotent = True
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                resp = self._http.request(
                    method, url, json=json, params=params, content=content, headers=hdrs
                )
            except httpx.TimeoutException as exc:
                if attempt >= self.max_retries:
                    raise APITimeoutError(f"request timed out: {method} {path}") from exc
                self._sleep(self._backoff(attempt))
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise APIConnectionError(
                        f"cannot reach the escrow at {self.base_url}: {exc}"
                    ) from exc
                self._sleep(self._backoff(attempt))
            else:
                # httpx's response and its stream refer to each other, and the response
                # to the request: until a full garbage collection (rare in a process that
                # holds a million accounts) every chunk body sent stayed alive. The body
                # is read; a plain stream of it ends the cycle.
                resp.stream = httpx.ByteStream(resp.content)
                wait = self._retry_after(resp)
                # 409 + Retry-After: our own earlier attempt is still running on the
                # escrow (same Idempotency-Key); waiting then gets its response.
                in_flight = idempotent and resp.status_code == 409 and wait is not None
                if (
                    (resp.status_code in _RETRY_STATUSES or in_flight)
                    and attempt < self.max_retries
                    and (wait is None or wait <= _MAX_RETRY_AFTER)
                ):
                    # A long Retry-After (a daily limit) is an answer, not a hiccup:
                    # raise at once instead of sleeping for minutes.
                    self._sleep(wait if wait is not None else self._backoff(attempt))
                elif resp.is_error:
                    raise from_response(resp)
                else:
                    return resp
            attempt += 1

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))  # noqa: S311

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return None

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- API ---------------------------------------------------------------------------
    def me(self) -> protocol.Me:
        """The company and key this client authenticates as."""
        return protocol.Me.model_validate(self.request("GET", "/v1/me").json())

    def create_api_key(self, *, name: str, role: protocol.Role) -> protocol.ApiKeyCreated:
        """Create an API key; its plaintext is in the result and is never shown again."""
        body = protocol.ApiKeyCreate(name=name, role=role).model_dump(mode="json")
        return protocol.ApiKeyCreated.model_validate(
            self.request("POST", "/v1/api-keys", json=body).json()
        )

    def list_api_keys(self, *, include_revoked: bool = False) -> list[protocol.ApiKey]:
        """All keys of my company (newest first), following pagination."""
        out: list[protocol.ApiKey] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"include_revoked": include_revoked, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = protocol.ApiKeyPage.model_validate(
                self.request("GET", "/v1/api-keys", params=params).json()
            )
            out.extend(page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    def revoke_api_key(self, key_id: str) -> protocol.ApiKey:
        """Revoke a key; it stops working on the next request."""
        return protocol.ApiKey.model_validate(
            self.request("DELETE", f"/v1/api-keys/{key_id}").json()
        )

    # -- keys and populations ----------------------------------------------------------
    def register_public_key(self, public_key: bytes | str) -> protocol.CompanyKey:
        """Register my company's X25519 public key (raw 32 bytes or base64url text)."""
        if isinstance(public_key, bytes):
            from blindmap.crypto import encode_public_key

            public_key = encode_public_key(public_key)
        body = protocol.PublicKeyRegister(public_key=public_key).model_dump()
        return protocol.CompanyKey.model_validate(
            self.request("PUT", "/v1/me/public-key", json=body).json()
        )

    def list_populations(self) -> list[protocol.Population]:
        page = protocol.PopulationList.model_validate(self.request("GET", "/v1/populations").json())
        return page.items

    def create_population(
        self, slug: str, *, kind: protocol.PopulationKind | str, display_name: str | None = None
    ) -> protocol.Population:
        body = protocol.PopulationCreate(
            slug=slug, kind=protocol.PopulationKind(kind), display_name=display_name
        ).model_dump(mode="json", exclude_none=True)
        return protocol.Population.model_validate(
            self.request("POST", "/v1/populations", json=body).json()
        )

    def update_population(
        self,
        slug: str,
        *,
        kind: protocol.PopulationKind | str | None = None,
        display_name: str | None = None,
    ) -> protocol.Population:
        body = protocol.PopulationUpdate(
            kind=protocol.PopulationKind(kind) if kind else None, display_name=display_name
        ).model_dump(mode="json", exclude_none=True)
        return protocol.Population.model_validate(
            self.request("PATCH", f"/v1/populations/{slug}", json=body).json()
        )

    def delete_population(self, slug: str) -> None:
        """Delete a population and its uploads in every partnership."""
        self.request("DELETE", f"/v1/populations/{slug}")

    # -- partnerships --------------------------------------------------------------------
    def invite_partner(self, partner_slug: str) -> protocol.Partnership:
        body = protocol.PartnershipCreate(partner=partner_slug).model_dump()
        return protocol.Partnership.model_validate(
            self.request("POST", "/v1/partnerships", json=body).json()
        )

    def list_partnerships(
        self, *, status: protocol.PartnershipStatus | str | None = None
    ) -> list[protocol.Partnership]:
        params = {"status": protocol.PartnershipStatus(status).value} if status else None
        page = protocol.PartnershipList.model_validate(
            self.request("GET", "/v1/partnerships", params=params).json()
        )
        return page.items

    def get_partnership(self, partnership_id: str | uuid.UUID) -> protocol.Partnership:
        return protocol.Partnership.model_validate(
            self.request("GET", f"/v1/partnerships/{partnership_id}").json()
        )

    def accept_partnership(self, partnership_id: str | uuid.UUID) -> protocol.Partnership:
        return protocol.Partnership.model_validate(
            self.request("POST", f"/v1/partnerships/{partnership_id}/accept").json()
        )

    def end_partnership(self, partnership_id: str | uuid.UUID) -> protocol.DeletionReceipt:
        """End a partnership; the escrow deletes all its data and returns a receipt."""
        return protocol.DeletionReceipt.model_validate(
            self.request("POST", f"/v1/partnerships/{partnership_id}/end").json()
        )

    # -- policies ------------------------------------------------------------------------
    def get_policy(self, partnership_id: str | uuid.UUID) -> protocol.PolicyVersion:
        """My current policy toward this partner."""
        return protocol.PolicyVersion.model_validate(
            self.request("GET", f"/v1/partnerships/{partnership_id}/policy").json()
        )

    def put_policy(
        self, partnership_id: str | uuid.UUID, policy: Policy | Mapping[str, Any]
    ) -> protocol.PolicyVersion:
        """Apply a policy (validated locally first); stored as a new version."""
        from blindmap.policy import Policy

        doc = policy if isinstance(policy, Policy) else Policy.model_validate(policy)
        return protocol.PolicyVersion.model_validate(
            self.request(
                "PUT",
                f"/v1/partnerships/{partnership_id}/policy",
                json=doc.model_dump(mode="json"),
            ).json()
        )

    def get_partner_policy(self, partnership_id: str | uuid.UUID) -> protocol.PartnerPolicy:
        """What my partner shares with me (the populations I may see, levels, fields)."""
        return protocol.PartnerPolicy.model_validate(
            self.request("GET", f"/v1/partnerships/{partnership_id}/partner-policy").json()
        )

    # -- audit ---------------------------------------------------------------------------
    def audit_events(self, *, limit: int | None = None) -> list[protocol.AuditEvent]:
        """My company's audit trail, newest first (all pages, or the first `limit`)."""
        out: list[protocol.AuditEvent] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000 if limit is None else min(limit, 1000)}
            if cursor:
                params["cursor"] = cursor
            page = protocol.AuditPage.model_validate(
                self.request("GET", "/v1/audit", params=params).json()
            )
            out.extend(page.items)
            if not page.next_cursor or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out
            cursor = page.next_cursor

    # -- uploads -------------------------------------------------------------------------
    def create_upload(
        self, partnership_id: str | uuid.UUID, manifest: protocol.UploadCreate
    ) -> protocol.Upload:
        """Stage an upload; send its chunks, then commit it."""
        return protocol.Upload.model_validate(
            self.request(
                "POST",
                f"/v1/partnerships/{partnership_id}/uploads",
                json=manifest.model_dump(mode="json"),
            ).json()
        )

    def get_upload(self, upload_id: str | uuid.UUID) -> protocol.Upload:
        """An upload's state, including which chunks the escrow already holds (resume)."""
        return protocol.Upload.model_validate(
            self.request("GET", f"/v1/uploads/{upload_id}").json()
        )

    def put_chunk(
        self,
        upload_id: str | uuid.UUID,
        n: int,
        body: bytes,
        *,
        content_type: str = protocol.NDJSON,
    ) -> protocol.ChunkReceipt:
        """Send chunk `n` (NDJSON records). Re-sending identical bytes is a no-op."""
        return protocol.ChunkReceipt.model_validate(
            self.request(
                "PUT",
                f"/v1/uploads/{upload_id}/chunks/{n}",
                content=body,
                headers={"Content-Type": content_type},
            ).json()
        )

    def commit_upload(
        self, upload_id: str | uuid.UUID, end: protocol.UploadCommit | None = None
    ) -> protocol.Upload:
        """Verify count and digest, replace the previous list atomically, start matching.
        `end` gives chunk_count and digest when the manifest left them for the commit."""
        body = None if end is None else end.model_dump(mode="json")
        return protocol.Upload.model_validate(
            self.request("POST", f"/v1/uploads/{upload_id}/commit", json=body).json()
        )

    def abort_upload(self, upload_id: str | uuid.UUID) -> None:
        self.request("DELETE", f"/v1/uploads/{upload_id}")

    def sync_status(self, partnership_id: str | uuid.UUID) -> protocol.PartnershipSyncStatus:
        """Per side and population: committed size, time, normalizer, stale keys, job."""
        return protocol.PartnershipSyncStatus.model_validate(
            self.request("GET", f"/v1/partnerships/{partnership_id}/status").json()
        )

    # -- reports -------------------------------------------------------------------------
    def report_summary(self, partnership_id: str | uuid.UUID) -> protocol.SummaryReport:
        """The account-mapping matrix: my populations by the partner's visible ones."""
        return protocol.SummaryReport.model_validate(
            self.request("GET", f"/v1/partnerships/{partnership_id}/reports/summary").json()
        )

    def report_overlaps(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> protocol.OverlapPage:
        """One page of my matched records with what the partner's policy releases."""
        params = _report_params(limit, mine=mine, theirs=theirs, cursor=cursor)
        # straight from the bytes: pydantic's own JSON parser, no intermediate dicts (a
        # bulk page holds thousands of items; docs/reliability.md, Load)
        return protocol.OverlapPage.model_validate_json(
            self.request(
                "GET", f"/v1/partnerships/{partnership_id}/reports/overlaps", params=params
            ).content
        )

    def report_overlaps_raw(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        cursor: str | None = None,
        limit: int = protocol.MAX_REPORT_PAGE,
    ) -> binary_pages.RawOverlapPage:
        """`report_overlaps` as a binary page (docs/protocol.md §9.1): the payloads as
        bytes, no base64 or JSON per record. For bulk exports (`reports.overlap_rows`).
        An escrow that answers JSON instead is read as JSON."""
        params = _report_params(limit, mine=mine, theirs=theirs, cursor=cursor)
        accept = f"{binary_pages.BINARY_OVERLAPS}, application/json;q=0.5"
        resp = self.request(
            "GET",
            f"/v1/partnerships/{partnership_id}/reports/overlaps",
            params=params,
            headers={"Accept": accept},
        )
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith(binary_pages.BINARY_OVERLAPS):
            try:
                return binary_pages.decode_overlap_page(resp.content)
            except binary_pages.BinaryPageError as exc:
                raise APIError(
                    f"the escrow sent a malformed binary overlaps page: {exc}",
                    request=resp.request,
                ) from None
        return binary_pages.from_json_page(protocol.OverlapPage.model_validate_json(resp.content))

    def report_overlap_cursors(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        limit: int = protocol.MAX_REPORT_PAGE,
    ) -> protocol.OverlapCursors:
        """Where each page of the overlaps report starts at `limit` records per page."""
        params = _report_params(limit, mine=mine, theirs=theirs)
        return protocol.OverlapCursors.model_validate(
            self.request(
                "GET",
                f"/v1/partnerships/{partnership_id}/reports/overlaps/cursors",
                params=params,
            ).json()
        )

    def iter_raw_overlap_pages(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        limit: int = protocol.MAX_REPORT_PAGE,
        read_ahead: bool = False,
        in_flight: int = 1,
    ) -> Iterator[binary_pages.RawOverlapPage]:
        """`iter_overlap_pages` with binary pages (`report_overlaps_raw`). With
        `in_flight` > 1 the cursor of every page is asked for
        (`report_overlap_cursors`) while the first page is fetched, and then that many
        pages are requested at once, while the caller handles the page before them: the
        escrow builds them side by side. Pages still come in order; a report that changed
        meanwhile (a list re-synced) raises :class:`BlindmapError`."""

        def fetch(cursor: str | None) -> binary_pages.RawOverlapPage:
            return self.report_overlaps_raw(
                partnership_id, mine=mine, theirs=theirs, cursor=cursor, limit=limit
            )

        if in_flight <= 1:
            return _pages(fetch, read_ahead=read_ahead)

        def plan() -> list[str | None] | None:
            try:
                return self.report_overlap_cursors(
                    partnership_id, mine=mine, theirs=theirs, limit=limit
                ).cursors
            except NotFoundError:
                # an escrow without the cursors route (or a 404 the first page repeats
                # with its own message): page by page instead
                return None

        return _pages_at(fetch, plan, in_flight)

    def iter_overlap_pages(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        limit: int = 1000,
        read_ahead: bool = False,
    ) -> Iterator[protocol.OverlapPage]:
        """Every overlap page in turn (each carries the policy versions behind it);
        `read_ahead` requests the next page while the caller handles this one."""
        return _pages(
            lambda cursor: self.report_overlaps(
                partnership_id, mine=mine, theirs=theirs, cursor=cursor, limit=limit
            ),
            read_ahead=read_ahead,
        )

    def iter_overlaps(
        self,
        partnership_id: str | uuid.UUID,
        *,
        mine: str | None = None,
        theirs: str | None = None,
        limit: int = 1000,
    ) -> Iterator[protocol.OverlapItem]:
        """All overlap pages, one item at a time."""
        for page in self.iter_overlap_pages(partnership_id, mine=mine, theirs=theirs, limit=limit):
            yield from page.items

    def iter_white_space_pages(
        self,
        partnership_id: str | uuid.UUID,
        *,
        theirs: str | None = None,
        not_in: list[str] | None = None,
        limit: int = 1000,
        read_ahead: bool = False,
    ) -> Iterator[protocol.WhiteSpacePage]:
        """Every white-space page in turn; `read_ahead` as for overlap pages."""
        return _pages(
            lambda cursor: self.report_white_space(
                partnership_id, theirs=theirs, not_in=not_in, cursor=cursor, limit=limit
            ),
            read_ahead=read_ahead,
        )

    def report_white_space(
        self,
        partnership_id: str | uuid.UUID,
        *,
        theirs: str | None = None,
        not_in: list[str] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> protocol.WhiteSpacePage:
        """The partner's records in `full` populations that match none of mine."""
        params: dict[str, Any] = {"limit": limit}
        if theirs:
            params["theirs"] = theirs
        if not_in:
            params["not_in"] = ",".join(not_in)
        if cursor:
            params["cursor"] = cursor
        return protocol.WhiteSpacePage.model_validate_json(
            self.request(
                "GET", f"/v1/partnerships/{partnership_id}/reports/white-space", params=params
            ).content
        )

    def lookup(
        self, partnership_id: str | uuid.UUID, tokens: list[protocol.LookupToken]
    ) -> protocol.LookupResponse:
        """The partner's populations and fields for accounts of my own committed lists."""
        body = protocol.LookupRequest(tokens=tokens).model_dump(mode="json")
        return protocol.LookupResponse.model_validate(
            self.request("POST", f"/v1/partnerships/{partnership_id}/lookup", json=body).json()
        )

    def disclosures(self, partnership_id: str | uuid.UUID) -> list[protocol.Disclosure]:
        """The partnership's whole disclosure log, oldest first."""
        out: list[protocol.Disclosure] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = protocol.DisclosurePage.model_validate(
                self.request(
                    "GET", f"/v1/partnerships/{partnership_id}/disclosures", params=params
                ).json()
            )
            out.extend(page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor


_Page = TypeVar("_Page", protocol.OverlapPage, protocol.WhiteSpacePage, binary_pages.RawOverlapPage)


def _report_params(limit: int, **filters: str | None) -> dict[str, Any]:
    """Query parameters of a report page: the limit and the filters that are set."""
    return {"limit": limit, **{k: v for k, v in filters.items() if v}}


def _pages_at(
    fetch: Callable[[str | None], binary_pages.RawOverlapPage],
    plan: Callable[[], list[str | None] | None],
    in_flight: int,
) -> Iterator[binary_pages.RawOverlapPage]:
    """The pages that start at the cursors `plan` gives, in order, `in_flight` requested
    at once; each page must end where the next one starts. A report's first page starts
    at its beginning (cursor None): it is requested while the plan is made, which takes
    the escrow about as long as a page (≈ 0.2 s at 1M x 1M). No plan (None): the pages
    one after the other, each with the next one's request ahead."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(in_flight, thread_name_prefix="blindmap-page") as pool:
        pending: deque[Future[binary_pages.RawOverlapPage]] = deque()
        pending.append(pool.submit(fetch, None))
        try:
            cursors = plan()
            if cursors is None:
                pending.popleft().cancel()
                yield from _pages(fetch, read_ahead=True)
                return
            if not cursors or cursors[0] is not None:  # not the escrow's plan: as it is
                pending.popleft().cancel()
            todo = iter(cursors[len(pending) :])
            for cursor in todo:
                pending.append(pool.submit(fetch, cursor))
                if len(pending) >= in_flight:
                    break
            k = 0
            while pending:
                page = pending.popleft().result()
                nxt = next(todo, _DONE)
                if nxt is not _DONE:
                    pending.append(pool.submit(fetch, nxt))  # type: ignore[arg-type]
                # the last planned page must be the report's last: a report that grew
                # after the plan (a match job committed in between) would otherwise end
                # early, silently, at the plan's last page
                expected = cursors[k + 1] if k + 1 < len(cursors) else None
                if page.next_cursor != expected:
                    raise BlindmapError(
                        "the overlaps report changed while it was fetched (a list was "
                        "re-synced or replaced): run it again"
                    )
                yield page
                k += 1
        finally:
            for f in pending:
                f.cancel()  # the caller stopped early: drop pages not yet asked for


_DONE = object()


def _pages(fetch: Callable[[str | None], _Page], *, read_ahead: bool = False) -> Iterator[_Page]:
    """Follow `next_cursor` from the first page to the last.

    With `read_ahead`, the next page is requested (and parsed) on a helper thread while
    the caller handles the current one: a whole-report export then decrypts page n while
    the escrow builds page n + 1, instead of taking turns (at 1M x 1M the escrow spends
    ~250 ms per 10k-record page and the client ~100 ms decrypting it). The client is used
    by one thread at a time; an error surfaces when its page is reached."""
    if not read_ahead:
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="blindmap-page") as pool:
        pending = pool.submit(fetch, None)
        try:
            while True:
                page = pending.result()
                if page.next_cursor:
                    pending = pool.submit(fetch, page.next_cursor)
                yield page
                if not page.next_cursor:
                    return
        finally:
            pending.cancel()  # the caller stopped early: drop a page not yet asked for
