"""One HTTP attempt of a leased delivery, and what it means for the delivery.

``prepare`` (pure) maps and signs the notification; ``HttpSender.send`` performs the request
with one pooled aiohttp session; ``decide`` (pure) turns the result into delivered / retry
with a delay / dead, from the subscription's :class:`~relay.retry.RetryPolicy`.
"""

from __future__ import annotations

import functools
import math
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.streams import EMPTY_PAYLOAD
from yarl import URL

from relay import __version__
from relay.crypto import CredentialsError
from relay.daemon.store import Ack, Job, Undecodable, Unopenable
from relay.errors import MappingError
from relay.webhook.body import (
    build_notification,
    compile_body_map_cached,
    dumps,
    encode_query,
)
from relay.webhook.netpolicy import ForbiddenAddress, GuardedResolver, check_url_host
from relay.webhook.retry import RetryPolicy, delay_with_retry_after, parse_retry_after
from relay.webhook.signing import webhook_headers

USER_AGENT = f"relay/{__version__}"
# Characters of a response body kept in the attempt log; the rest is not even read.
RESPONSE_BODY_LIMIT = 1024
# Bytes read of a compressed body (whatever the request asked, a server or a proxy in front of
# it may compress): enough to decode RESPONSE_BODY_LIMIT characters of most bodies, and a
# bound on what a decompression bomb can cost (the output is capped too).
COMPRESSED_READ_LIMIT = 16 * 1024
# Characters of an attempt's error text kept (it may quote what the receiver sent).
ERROR_LIMIT = 2000
# Distinct URL hosts whose SSRF verdict is remembered (one per subscription host at most).
HOST_CACHE_SIZE = 10_000


# Not frozen, like relay.store.Job (built once per attempt).
@dataclass(slots=True)
class Prepared:
    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None


# Not frozen, like relay.store.Job (built once per attempt).
@dataclass(slots=True)
class Result:
    """What one attempt saw."""

    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    error_kind: str | None = None  # 'timeout' | 'connect' | 'tls' | 'forbidden' | 'mapping' | ...
    response_body: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def webhook_id(job: Job) -> str:
    """Stable across attempts, relays, crashes and replays: derived from the event alone."""
    return f"msg_{job.event_id.hex}"


def prepare(job: Job, timestamp: int) -> Prepared:
    """Build the request of one attempt: mapped body or query, subscription and signature headers.

    Raises :class:`MappingError` when the subscription's body map cannot be applied, and
    :class:`CredentialsError` when its credentials could not be decrypted.
    """
    if isinstance(job.headers, Unopenable):
        raise CredentialsError(job.headers.reason)
    if isinstance(job.payload, Undecodable):
        raise MappingError(job.payload.reason)
    notification = build_notification(job.event_type, job.version, job.payload, job.event_names)
    if job.body_map:
        notification = compile_body_map_cached(job.body_map).apply(notification)
    # During a rotation overlap both the new and the previous secret sign (two v1 signatures).
    secrets = [s for s in (job.secret, job.previous_secret) if s]
    url = _url(job.url)
    headers = dict(job.headers)
    headers["User-Agent"] = USER_AGENT
    # relay keeps only an excerpt of the answer: ask for it uncompressed (aiohttp would offer
    # gzip and deflate). A server that compresses anyway is handled by _excerpt().
    headers["Accept-Encoding"] = "identity"
    if job.method == "GET":
        url = url.extend_query(encode_query(notification))
        # Standard Webhooks signs a body; a GET has none, so relay signs the query string
        # (the part after '?', exactly as sent).
        signed = url.raw_query_string
        headers.update(webhook_headers(webhook_id(job), timestamp, signed, secrets))
        return Prepared("GET", url, headers, None)
    body = dumps(notification)
    headers["Content-Type"] = "application/json"
    headers.update(webhook_headers(webhook_id(job), timestamp, body, secrets))
    return Prepared("POST", url, headers, body.encode())


# Parsed subscription URLs by their text (a yarl URL is immutable, so it can be shared):
# parsing one per attempt cost about 0.5 us of a delivery (timeit: 0.58 us a parse).
_URLS: dict[str, URL] = {}


def _url(text: str) -> URL:
    url = _URLS.get(text)
    if url is None:
        url = URL(text, encoded=False)
        if len(_URLS) < HOST_CACHE_SIZE:
            _URLS[text] = url
    return url


def decide(job: Job, result: Result) -> Ack:
    """The delivery's next state after ``result``: delivered, retry after a delay, or dead."""
    if result.ok:
        outcome, delay = "delivered", 0.0
    elif result.error_kind == "mapping":
        # A body map that cannot be applied fails the same way every time: dead at once.
        outcome, delay = "dead", 0.0
    else:
        policy = RetryPolicy(max_retries=job.max_retries, backoff_ms=job.backoff_ms)
        scheduled = policy.next_delay(job.failures + 1)
        if scheduled is None:
            outcome, delay = "dead", 0.0
        else:
            outcome, delay = "retry", delay_with_retry_after(scheduled, result.retry_after)
    return Ack(
        id=job.id,
        token=job.token,
        outcome=outcome,
        delay=delay,
        status_code=result.status_code,
        # Both may quote what the receiver sent: only text Postgres can store goes to the ack.
        error=storable_text(result.error, ERROR_LIMIT),
        started_at=result.started_at,
        duration_ms=result.duration_ms,
        response_body=storable_text(result.response_body, RESPONSE_BODY_LIMIT),
    )


def storable_text(text: str | None, limit: int) -> str | None:
    """``text`` as Postgres can store it in a text column: at most ``limit`` characters, no
    NUL (refused by Postgres whatever the encoding) and no lone surrogate (what
    ``surrogateescape`` makes of invalid UTF-8 in a header; refused by the encoder)."""
    if text is None:
        return None
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class HttpSender:
    """Sends prepared requests through one pooled aiohttp session."""

    def __init__(self, concurrency: int, allowed_networks: tuple[Any, ...]) -> None:
        self.allowed = allowed_networks
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._host_verdicts: dict[str, str | None] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            resolver=GuardedResolver(self.allowed),
            ttl_dns_cache=10,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def attempt(self, job: Job) -> Result:
        """Prepare and send one attempt of ``job``; never raises for delivery failures."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - t0) * 1000.0

        try:
            prepared = prepare(job, int(time.time()))
        except MappingError as exc:
            return Result(started, elapsed(), error=f"body map failed: {exc}", error_kind="mapping")
        except (ValueError, TypeError, RecursionError) as exc:
            # A payload jsonb holds that cannot be encoded again fails the same way every
            # time: dead at once (kind 'mapping'), never an exception out of the attempt.
            return Result(
                started, elapsed(), error=f"cannot build the request: {exc}", error_kind="mapping"
            )
        except CredentialsError as exc:
            # Failed like any attempt (retried, then dead, replayable once the key is fixed);
            # nothing is sent: no request without its credentials, nor with ciphertext.
            return Result(started, elapsed(), error=str(exc), error_kind="credentials")
        refused = self._refused_literal(prepared.url.host or "")
        if refused is not None:
            return Result(started, elapsed(), error=refused, error_kind="forbidden")
        try:
            return await self._send(prepared, job.timeout_ms / 1000.0, started, t0)
        except ForbiddenAddress as exc:
            return Result(started, elapsed(), error=str(exc), error_kind="forbidden")
        except TimeoutError:
            return Result(
                started, elapsed(), error=f"timeout after {job.timeout_ms} ms", error_kind="timeout"
            )
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            return Result(started, elapsed(), error=f"TLS error: {exc}", error_kind="tls")
        except aiohttp.ClientConnectorError as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                return Result(started, elapsed(), error=str(forbidden), error_kind="forbidden")
            return Result(started, elapsed(), error=f"connect error: {exc}", error_kind="connect")
        except (aiohttp.ClientError, OSError, ssl.SSLError, ValueError) as exc:
            detail = str(exc) or type(exc).__name__
            return Result(
                started, elapsed(), error=f"{type(exc).__name__}: {detail}", error_kind="error"
            )

    def _refused_literal(self, host: str) -> str | None:
        """Why an IP-literal host is refused (None: allowed, or a name the resolver checks).

        Cached per host: parsing the address on every request showed in profiles, and the
        answer cannot change while the allowed networks stay the same.
        """
        try:
            return self._host_verdicts[host]
        except KeyError:
            pass
        try:
            check_url_host(host, self.allowed)
            verdict = None
        except ForbiddenAddress as exc:
            verdict = str(exc)
        if len(self._host_verdicts) < HOST_CACHE_SIZE:
            self._host_verdicts[host] = verdict
        return verdict

    async def _send(self, p: Prepared, timeout: float, started: datetime, t0: float) -> Result:
        assert self._session is not None, "HttpSender.start() not called"
        async with self._session.request(
            p.method,
            p.url,
            headers=p.headers,
            data=p.body,
            allow_redirects=False,
            timeout=_client_timeout(timeout),
        ) as resp:
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if resp.content is EMPTY_PAYLOAD and not resp.content_length:
                # No body to read (a 204, say): what _read_head() would find, without its
                # two coroutines and second Content-Length parse (about 0.3 us, timeit).
                raw = b""
            else:
                raw = await _read_head(resp, encoding)
            duration = (time.perf_counter() - t0) * 1000.0
            status = resp.status
            retry_after = None
            if status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), datetime.now(UTC))
            error = None
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error += f" redirect to {resp.headers.get('Location', '?')} (not followed)"
            return Result(
                started,
                duration,
                status_code=status,
                error=error,
                response_body=_excerpt(raw, encoding),
                retry_after=retry_after,
            )


@functools.lru_cache(maxsize=1024)
def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """aiohttp's own total timeout (connect, send, and reading the response head), exact
    (no rounding up to whole seconds), one object per distinct value. Cheaper than an
    ``asyncio.timeout`` around the request: on Python 3.11 that asks for the running loop
    (a getpid() system call) three times per attempt."""
    return aiohttp.ClientTimeout(total=seconds, ceil_threshold=math.inf)


async def _read_head(resp: aiohttp.ClientResponse, encoding: str) -> bytes:
    """The first bytes of the body: RESPONSE_BODY_LIMIT of a plain one (what the attempt log
    keeps), COMPRESSED_READ_LIMIT of a compressed one (to decode an excerpt from).

    Reads until that many bytes, the declared Content-Length, or EOF: a single read returns
    only what is buffered, and a response cut off by a reset must fail the attempt rather
    than count as delivered. The rest of an endless or huge body is never read: leaving the
    response closes the connection.
    """
    want = RESPONSE_BODY_LIMIT if encoding in ("", "identity") else COMPRESSED_READ_LIMIT
    if resp.content_length is not None:
        want = min(want, resp.content_length)
    raw = b""
    while len(raw) < want:
        chunk = await resp.content.read(want - len(raw))
        if not chunk:
            if resp.content_length is not None:
                raise aiohttp.ClientPayloadError(
                    f"response truncated: {len(raw)} of {resp.content_length} bytes"
                )
            break
        raw += chunk
    return raw


def _excerpt(raw: bytes, encoding: str) -> str | None:
    """The stored excerpt of a body's first bytes: decoded from its Content-Encoding (gzip or
    deflate, output capped: a bomb costs at most RESPONSE_BODY_LIMIT bytes), then as UTF-8
    with invalid bytes replaced, cut to RESPONSE_BODY_LIMIT characters, NUL-free. An encoding
    relay does not decode (br, zstd, ...) or a corrupt stream is named, not stored as bytes.
    """
    if not raw:
        return None
    if encoding not in ("", "identity"):
        decoded = _decompress_head(raw, encoding)
        if decoded is None:
            return f"[{len(raw)}+ bytes of {encoding[:40]}-encoded body, not decoded]"
        raw = decoded
    text = raw.decode("utf-8", "replace")
    return storable_text(text, RESPONSE_BODY_LIMIT)


def _decompress_head(raw: bytes, encoding: str) -> bytes | None:
    """Up to RESPONSE_BODY_LIMIT bytes decompressed from the start of a gzip/deflate stream
    (a truncated stream is fine: only its head is wanted); None if not decodable here."""
    if encoding in ("gzip", "x-gzip"):
        candidates = [zlib.MAX_WBITS | 16]
    elif encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some servers send raw deflate.
        candidates = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        return None
    for wbits in candidates:
        try:
            return zlib.decompressobj(wbits).decompress(raw, RESPONSE_BODY_LIMIT)
        except zlib.error:
            continue
    return None


def _forbidden_cause(exc: BaseException) -> ForbiddenAddress | None:
    """aiohttp wraps resolver errors; find our refusal in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ForbiddenAddress):
            return seen
        seen = seen.__cause__ or seen.__context__
    os_error = getattr(exc, "os_error", None)
    return os_error if isinstance(os_error, ForbiddenAddress) else None


def attempt_summary(job: Job, ack: Ack) -> dict[str, Any]:
    """Fields of the one log line per attempt outcome: ids, never URLs' secrets or headers."""
    return {
        "delivery_id": job.id,
        "subscription_id": job.subscription_id,
        "event_type": job.event_type,
        "attempt": job.attempts + 1,
        "outcome": ack.outcome,
        "status": ack.status_code,
        "error": ack.error,
        "duration_ms": round(ack.duration_ms, 2),
        "retry_in_s": round(ack.delay, 3) if ack.outcome == "retry" else None,
    }
