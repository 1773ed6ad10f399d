"""Per-API-key rate limiting: an in-process token bucket, `RateLimit` headers and 429.

Every `/v1` request takes one token from the bucket of its API key (a well-formed bearer
key; anything else shares one bucket per client address, so made-up keys cannot mint
fresh buckets to dodge the limit of their address). A bucket holds `rate_limit_burst`
tokens and refills at `rate_limit_per_second`. An empty bucket answers 429 before the
request touches the body or the database, so a flooding company costs the others little.

Why in process and not in the database: a shared bucket would add a write (or a lock) to
every request, read mix included, for a limit that exists to protect this process. The
service runs one uvicorn worker per process (`blindmap-server serve`), so N processes
behind a load balancer allow up to N times the configured rate per key; set the limit
per process accordingly (docs/reliability.md). Buckets are bounded (LRU), so a stream of
new keys costs bounded memory; an evicted bucket comes back full, which only ever errs
towards letting a request through.

Header syntax: draft-ietf-httpapi-ratelimit-headers-11 (Structured Fields lists):

    RateLimit-Policy: "per-key";q=<burst>;w=<seconds to refill an empty bucket>
    RateLimit: "per-key";r=<requests left now>;t=<seconds until the bucket is full>

On a 429, `r=0` and `t` equals `Retry-After` (the draft: Retry-After should not point
before the end of the effective window).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.auth import display_prefix, well_formed

POLICY = "per-key"
MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Thread-safe token buckets by identity (the ASGI app may run on several event
    loops at once, e.g. one per TestClient thread)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, ident: str) -> tuple[bool, float]:
        """Take one token: (allowed, tokens left afterwards)."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(ident)
            if bucket is None:
                bucket = self._buckets[ident] = _Bucket(float(self.burst), now)
                if len(self._buckets) > self.max_buckets:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(ident)
                elapsed = max(0.0, now - bucket.stamp)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True, bucket.tokens
            return False, bucket.tokens

    # -- header values -------------------------------------------------------------------
    @property
    def window(self) -> int:
        return max(1, math.ceil(self.burst / self.rate))

    def policy_header(self) -> str:
        return f'"{POLICY}";q={self.burst};w={self.window}'

    def limit_header(self, tokens: float, reset: int | None = None) -> str:
        if reset is None:
            reset = math.ceil(max(0.0, self.burst - tokens) / self.rate)
        return f'"{POLICY}";r={math.floor(tokens)};t={reset}'

    def retry_after(self, tokens: float) -> int:
        return max(1, math.ceil((1.0 - tokens) / self.rate))


def _identity(scope: Scope) -> tuple[str, str | None]:
    """(bucket id, display prefix of the API key or None). The key itself is never kept,
    only a digest."""
    auth = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            auth = value.decode("latin-1")
            break
    scheme, _, key = auth.partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and well_formed(key):
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32], display_prefix(key)
    client = scope.get("client")
    return "addr:" + (str(client[0]) if client else "unknown"), None


class RateLimit:
    """Pure ASGI middleware: 429 when the caller's bucket is empty, RateLimit headers on
    every `/v1` response."""

    def __init__(
        self, app: ASGIApp, *, per_second: float, burst: int, delay_seconds: float = 0.0
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(per_second, burst)
        self.delay = delay_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        ident, prefix = _identity(scope)
        allowed, tokens = self.buckets.take(ident)
        policy = self.buckets.policy_header().encode()
        if not allowed:
            if prefix:  # the access log names the throttled key (its public prefix only)
                scope.setdefault("state", {})["key_prefix"] = prefix
            await self._reject(scope, send, tokens, prefix is not None)
            return
        limit = self.buckets.limit_header(tokens).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"ratelimit-policy", policy), (b"ratelimit", limit)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _reject(self, scope: Scope, send: Send, tokens: float, is_key: bool) -> None:
        b = self.buckets
        wait = b.retry_after(tokens)
        if self.delay > 0:
            # A throttled request costs the server almost nothing, so a closed-loop client
            # (a retry loop, a thread pool) would otherwise spin on 429s as fast as the
            # event loop answers them and crowd out everyone else. Holding the answer a
            # moment (a sleeping coroutine: no thread, no connection from the pool) caps
            # such a flood at its concurrency / delay.
            await anyio.sleep(min(self.delay, wait))
        who = "this API key" if is_key else "this client address (no valid API key)"
        err = errors.RateLimited(
            f"Too many requests for {who}: the limit is {b.rate:g} requests per second "
            f"with bursts of {b.burst}. Retry after {wait} s.",
            limit_per_second=b.rate,
            burst=b.burst,
            retry_after=wait,
        )
        err.extra["violated-policies"] = [POLICY]  # the draft's quota-exceeded member
        body = json.dumps(err.problem(scope["path"])).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", errors.PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(wait).encode()),
                    (b"ratelimit-policy", b.policy_header().encode()),
                    (b"ratelimit", b.limit_header(0.0, reset=wait).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
