"""Report pages with read-ahead (`iter_overlap_pages(read_ahead=True)`), at the transport.

The next page is requested while the caller handles the current one; pages still come in
order, a fault on a later page surfaces when that page is reached, and a caller that stops
early leaves at most the one page in flight.
"""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

import blindmap
from blindmap import APIConnectionError

PID = uuid.uuid4()


def _page(cursor: str | None, nxt: str | None) -> dict:
    return {
        "partnership_id": str(PID),
        "items": [],
        "next_cursor": nxt,
        "policy_versions": {"mine": 1, "partner": 1},
    }


class Pages:
    """A transport serving pages c0 -> c1 -> ... -> c{n-1}; records the cursors asked for."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.asked: list[str | None] = []
        self.second = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        i = 0 if cursor is None else int(cursor.removeprefix("c"))
        self.asked.append(cursor)
        if len(self.asked) == 2:
            self.second.set()
        if i == self.fail_at:
            raise httpx.ConnectError("connection reset", request=request)
        nxt = f"c{i + 1}" if i + 1 < self.n else None
        return httpx.Response(200, content=json.dumps(_page(cursor, nxt)).encode())


def _client(t: Pages) -> blindmap.Client:
    return blindmap.Client(
        base_url="https://escrow.example",
        api_key="bmk_test",
        http_client=httpx.Client(
            base_url="https://escrow.example", transport=httpx.MockTransport(t)
        ),
        max_retries=0,
    )


@pytest.mark.parametrize("read_ahead", [False, True])
def test_pages_in_order(read_ahead: bool) -> None:
    t = Pages(4)
    pages = list(_client(t).iter_overlap_pages(PID, read_ahead=read_ahead))
    assert [p.next_cursor for p in pages] == ["c1", "c2", "c3", None]
    assert t.asked == [None, "c1", "c2", "c3"]


def test_next_page_is_asked_for_before_the_caller_wants_it() -> None:
    t = Pages(3)
    it = _client(t).iter_overlap_pages(PID, read_ahead=True)
    first = next(it)
    assert first.next_cursor == "c1"
    # the caller is still on page 1: page 2 is already on its way
    assert t.second.wait(5), "page 2 was not requested ahead"
    it.close()


def test_without_read_ahead_nothing_is_asked_early() -> None:
    t = Pages(3)
    it = _client(t).iter_overlap_pages(PID)
    next(it)
    assert not t.second.wait(0.3)
    it.close()


def test_a_fault_on_a_later_page_surfaces_there() -> None:
    t = Pages(4, fail_at=2)
    it = _client(t).iter_overlap_pages(PID, read_ahead=True)
    assert next(it).next_cursor == "c1"
    assert next(it).next_cursor == "c2"
    with pytest.raises(APIConnectionError):
        next(it)


def test_stopping_early_leaves_at_most_one_page_in_flight() -> None:
    t = Pages(10)
    it = _client(t).iter_overlap_pages(PID, read_ahead=True)
    next(it)
    it.close()
    # page 2 was either cancelled before it was sent or sent and dropped; never page 3
    assert t.asked in ([None], [None, "c1"])
