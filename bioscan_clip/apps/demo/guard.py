"""The demo's server guard: ASGI middleware in front of gradio that makes a public Space fair and bounded (a cap on
every request body, checked before it is read; per-client quotas on uploads and on identifications, with
``Retry-After``; a capped upload cache; ``Retry-After`` on "queue full"; no server paths in ``/config``), and
:func:`launch`, which serves a page (:mod:`bioscan_clip.apps.demo.page`) with every limit on.

A client is its address: the TCP peer, or behind one trusted proxy that appends the peer it saw to
``X-Forwarded-For`` (a Hugging Face Space; on only when asked, or where ``SPACE_ID`` is set), that last entry. The
entries before it are whatever the client sent, so they are never used."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import anyio
import gradio as gr

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 10


MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024


QUEUE_MAX_SIZE = 16  # waiting requests beyond this get "queue full" instead of piling up


UPLOAD_CACHE_CAP_MB = 200  # total size of the upload cache folder; the oldest uploads are deleted to stay under it


UPLOADS_PER_MINUTE = 12  # per client, refilled continuously ...


UPLOAD_BURST = 6  # ... after a first burst of this many


UPLOAD_OVERHEAD_BYTES = 64 * 1024  # multipart framing allowed on top of the per-file cap (one file per request)


MAX_TRACKED_CLIENTS = 10_000


MAX_BODY_KB = 256  # every request but an upload: a barcode is at most 20,000 characters, photos come by upload


CALLS_PER_MINUTE = 30  # identifications (queue joins and calls) per client, refilled continuously ...


CALL_BURST = 10  # ... after a first burst of this many


PENDING_PER_CLIENT = 2  # a client's identifications waiting or running at once: the rest of the queue stays open


# A client that asks again before the Retry-After it was given is answered (429 again) only after this long, so that
# ignoring Retry-After costs it time instead of costing the server the CPU the others' identifications run on ...
IGNORED_RETRY_DELAY_S = 2.0


MAX_DELAYED_REFUSALS = 256  # ... for at most this many requests held at once (beyond, refused at once)


# The routes that start an identification: the page's queue join, the REST calls (``/run``/``/api`` are closed by
# ``api_open=False`` but counted all the same).
_CALL_ROUTE = re.compile(r"(?:/gradio_api)?/(?:queue/join|call(?:/v2)?/[^/]+|run/[^/]+|api/[^/]+)/?")


ALIAS_ROUTE = "/gradio_api/demo-file/"


_GRADIO_CACHE_SUBFOLDER = re.compile(r"[0-9a-f]{64}")


_REWRITTEN_PAGES = ("/", "/config", "/config/", "/gradio_api/info", "/gradio_api/info/")


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, then ``per_minute``; says how long to wait when empty."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str, now: float | None = None) -> float:
        """0 when ``client`` may go ahead (one token taken), else the seconds until its next token."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:  # forget the least recently seen
                self._buckets.popitem(last=False)
            return wait


class UploadCache:
    """The size of gradio's upload folder, kept under ``cap_bytes`` by deleting the oldest files first.

    Only gradio's own subfolders (64 hex characters) are counted or touched; files named in the app's config (the
    example photos) are never deleted. Uploads in progress reserve their declared size so concurrent ones cannot
    overshoot together.
    """

    def __init__(self, folder: str | os.PathLike, cap_bytes: int, protected: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.cap_bytes = cap_bytes
        self.protected = set(protected or ())
        self.reserved = 0
        self._lock = threading.Lock()

    def _files(self) -> list[tuple[float, int, str]]:
        found = []
        try:
            subfolders = list(os.scandir(self.folder))
        except FileNotFoundError:
            return found
        for sub in subfolders:
            if not (_GRADIO_CACHE_SUBFOLDER.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False)):
                continue
            try:
                for entry in os.scandir(sub.path):
                    if entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found.append((stat.st_mtime, stat.st_size, entry.path))
            except FileNotFoundError:
                continue
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def admit(self, incoming: int) -> bool:
        """Reserves room for ``incoming`` bytes, deleting the oldest unprotected files if needed; False if no room."""
        with self._lock:
            files = self._files()
            total = sum(size for _, size, _ in files) + self.reserved
            if total + incoming > self.cap_bytes:
                for _, size, path in sorted(files):
                    if path in self.protected:
                        continue
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.dirname(path))  # only when empty
                    total -= size
                    if total + incoming <= self.cap_bytes:
                        break
            if total + incoming > self.cap_bytes:
                return False
            self.reserved += incoming
            return True

    def release(self, incoming: int) -> None:
        with self._lock:
            self.reserved -= incoming


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class DemoGuard:
    """ASGI middleware in front of the gradio app (passed as ``app_kwargs={"middleware": ...}``).

    - every request body but an upload's: at most ``max_body_bytes``, refused with ``413`` from its declared
      ``Content-Length`` before anything is read, or once that many bytes of a chunked body have arrived (the body
      is read here, whole and bounded, and handed on to gradio);
    - ``POST .../upload``: a per-client rate limit (``429`` with ``Retry-After``), one file per request with a
      declared length and no chunked framing (``411``/``413``), and room in the capped upload cache (``503`` with
      ``Retry-After`` when even deleting old uploads cannot make room);
    - identifications (queue joins and calls): at most ``pending_per_client`` of a client's waiting or running at
      once and a per-client rate, else ``429`` whose ``Retry-After`` and message give the cap, so one client that
      ignores ``Retry-After`` cannot fill the queue others wait in;
    - ``503`` from the queue ("queue full") gets a ``Retry-After`` estimated from the queue's average job time;
    - the page, ``/config`` and ``/gradio_api/info`` name cached files by an alias instead of their server path,
      served from ``/gradio_api/demo-file/`` for exactly those files.
    """

    def __init__(self, app: Any, *, blocks: gr.Blocks, limiter: RateLimiter, cache: UploadCache,
                 max_request_bytes: int, call_limiter: RateLimiter, pending_per_client: int = PENDING_PER_CLIENT,
                 max_body_bytes: int = MAX_BODY_KB * 1024, trust_forwarded_for: bool = False) -> None:  # fmt: skip
        self.app = app
        self.blocks = blocks
        self.limiter = limiter
        self.cache = cache
        self.max_request_bytes = max_request_bytes
        self.call_limiter = call_limiter
        self.pending_per_client = pending_per_client
        self.max_body_bytes = max_body_bytes
        self.trust_forwarded_for = trust_forwarded_for
        self.joining: Counter[str] = Counter()  # calls admitted whose event is not yet surely in the queue
        self.told_to_wait: OrderedDict[str, float] = OrderedDict()  # client -> until when its last 429 said to wait
        self.delayed = 0  # refusals being held now
        self.aliases: dict[str, str] = {}  # alias -> server path
        self._path_pattern = re.compile(re.escape(str(cache.folder)) + r"/([0-9a-f]{64})/([^\"'\\?#<>\s]+)")

    def client_key(self, scope: dict) -> str:
        if self.trust_forwarded_for:  # behind one trusted proxy (a Space): the address it appended
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded and forwarded.split(",")[-1].strip():
                return forwarded.split(",")[-1].strip()
        client = scope.get("client")
        return client[0] if client else "unknown"

    def queue_retry_after(self) -> int:
        queue = getattr(self.blocks, "_queue", None)
        waiting = getattr(queue, "max_size", None) or QUEUE_MAX_SIZE
        estimate = self._average_job_s() * waiting / max(getattr(queue, "default_concurrency_limit", 1) or 1, 1)
        return int(min(max(math.ceil(estimate), 1), 60))

    def pending(self, client: str) -> int:
        """The client's identifications waiting in gradio's queue or running, and those being admitted now."""
        queue = getattr(self.blocks, "_queue", None)
        waiting = [e for q in getattr(queue, "event_queue_per_concurrency_id", {}).values() for e in q.queue]
        running = [e for job in getattr(queue, "active_jobs", ()) if job for e in job]
        scopes = (getattr(getattr(event, "request", None), "scope", None) for event in waiting + running)
        return self.joining[client] + sum(1 for scope in scopes if scope and self.client_key(scope) == client)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "POST" and path.rstrip("/").endswith("/upload"):
            return await self._upload(scope, receive, send)
        calling = method == "POST" and _CALL_ROUTE.fullmatch(path) is not None
        client = self.client_key(scope)
        if calling:  # refused before the body is read
            refusal = self._call_refusal(client)
            if refusal is not None:
                text, seconds = refusal
                return await self._too_many(send, client, text, seconds, policy=self._call_policy())
        if calling:
            self.joining[client] += 1  # from admission on, so that the same client's next call counts this one
            try:
                return await self._bounded(scope, receive, self._with_retry_after(send), self.app)
            finally:
                self.joining[client] -= 1
                if not self.joining[client]:
                    del self.joining[client]
        handler = self.app
        if method == "GET" and path.startswith(ALIAS_ROUTE):
            handler = functools.partial(self._alias_file, name=path[len(ALIAS_ROUTE) :])
        elif method == "GET" and path in _REWRITTEN_PAGES:
            handler = self._rewritten
        return await self._bounded(scope, receive, send, handler)

    async def _bounded(self, scope: dict, receive: Any, send: Any, handler: Any) -> None:
        """``handler`` on the request with its body capped: 413 instead when the body is over ``max_body_bytes``."""
        receive = await self._bounded_body(scope, receive)
        if receive is None:
            limit = self.max_body_bytes // 1024
            return await _plain(send, 413, f"Request body too large: at most {limit} KB (photos go by upload).")
        await handler(scope, receive, send)

    async def _too_many(self, send: Any, client: str, text: str, seconds: int, *, policy: str = "") -> None:
        """429 with ``Retry-After``; held for a while first when ``client`` was already told to wait and did not."""
        now = time.monotonic()
        ignored = self.told_to_wait.pop(client, 0.0) > now
        self.told_to_wait[client] = now + seconds
        while len(self.told_to_wait) > MAX_TRACKED_CLIENTS:  # forget the least recently refused
            self.told_to_wait.popitem(last=False)
        if ignored and self.delayed < MAX_DELAYED_REFUSALS:
            self.delayed += 1
            try:
                await anyio.sleep(min(IGNORED_RETRY_DELAY_S, seconds))
            finally:
                self.delayed -= 1
        await _plain(send, 429, text, retry_after=seconds, policy=policy)

    def _call_policy(self) -> str:
        per_minute = round(self.call_limiter.rate * 60)
        return f"{self.pending_per_client} at once; {per_minute} per minute, burst {int(self.call_limiter.burst)}"

    def _call_refusal(self, client: str) -> tuple[str, int] | None:
        """``(message, Retry-After seconds)`` when ``client`` is over a quota, else None (one call admitted)."""
        waiting = self.pending(client)
        if waiting >= self.pending_per_client:
            seconds = max(1, min(60, math.ceil(self._average_job_s() * waiting)))
            return (
                f"Too many identifications from your address: {waiting} waiting or running, at most "
                f"{self.pending_per_client} at once; retry in {seconds} s.",
                seconds,
            )
        wait = self.call_limiter.acquire(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            per_minute = round(self.call_limiter.rate * 60)
            return (
                f"Too many identifications from your address: at most {per_minute} per minute; retry in {seconds} s.",
                seconds,
            )
        return None

    async def _bounded_body(self, scope: dict, receive: Any) -> Any:
        """``receive`` with the body read whole (at most ``max_body_bytes``) and replayed; None when it is larger.

        A declared length over the cap is refused before a byte is read; a chunked body is read up to the cap and
        no further. Requests without a body pass untouched (their ``receive`` still reports a disconnect).
        """
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            return None
        if _header(scope, b"transfer-encoding") is None and (length is None or length.strip() == "0"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: gradio sees that, as it would have
                chunks = None
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        first = {"type": "http.disconnect"} if chunks is None else {"type": "http.request", "body": b"".join(chunks)}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        return replay

    def _average_job_s(self) -> float:
        queue = getattr(self.blocks, "_queue", None)
        times = [t.avg_time for t in getattr(queue, "process_time_per_fn", {}).values() if t.count]
        return max(times, default=1.0)

    def _with_retry_after(self, send: Any) -> Any:
        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                headers.append((b"retry-after", str(self.queue_retry_after()).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return sending

    async def _upload(self, scope: dict, receive: Any, send: Any) -> None:
        wait = self.limiter.acquire(self.client_key(scope))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return await self._too_many(
                send, self.client_key(scope), f"Too many uploads; retry in {seconds} s.", seconds
            )
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit() or _header(scope, b"transfer-encoding") is not None:
            # framed by its declared length (the server reads no further), so the checks below bound what arrives
            return await _plain(send, 411, "An upload must declare its Content-Length (and not be chunked).")
        incoming = int(length)
        if incoming > self.max_request_bytes:
            limit = (self.max_request_bytes - UPLOAD_OVERHEAD_BYTES) // (1024 * 1024)
            return await _plain(send, 413, f"Upload too large: one file of at most {limit} MB per request.")
        if not await anyio.to_thread.run_sync(self.cache.admit, incoming):
            return await _plain(send, 503, "The upload cache is full; retry shortly.", retry_after=5)
        try:
            await self.app(scope, receive, send)
        finally:
            self.cache.release(incoming)

    def _rewrite(self, text: str) -> str:
        def alias(match: re.Match) -> str:
            name = f"{match.group(1)[:16]}/{match.group(2)}"
            self.aliases[name] = match.group(0)
            return name

        text = re.sub(r"file=" + self._path_pattern.pattern, lambda m: "demo-file/" + alias(m), text)
        return self._path_pattern.sub(alias, text)

    async def _rewritten(self, scope: dict, receive: Any, send: Any) -> None:
        start: dict = {}
        body = bytearray()

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    content = bytes(body)
                    encoding = [v for k, v in start.get("headers", []) if k.lower() == b"content-encoding"]
                    if not encoding:
                        with contextlib.suppress(UnicodeDecodeError):
                            content = self._rewrite(content.decode("utf-8")).encode("utf-8")
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(content)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": content})
                return
            await send(message)

        await self.app(scope, receive, capture)

    async def _alias_file(self, scope: dict, receive: Any, send: Any, name: str) -> None:
        from starlette.responses import FileResponse

        target = self.aliases.get(name)
        if target is None or not os.path.isfile(target):
            return await _plain(send, 404, "Not found.")
        await FileResponse(target)(scope, receive, send)


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_file_size_mb: int = MAX_UPLOAD_MB,
    queue_size: int = QUEUE_MAX_SIZE,
    upload_cache_mb: int = UPLOAD_CACHE_CAP_MB,
    uploads_per_minute: float = UPLOADS_PER_MINUTE,
    upload_burst: int = UPLOAD_BURST,
    calls_per_minute: float = CALLS_PER_MINUTE,
    call_burst: int = CALL_BURST,
    pending_per_client: int = PENDING_PER_CLIENT,
    max_body_kb: int = MAX_BODY_KB,
    trust_forwarded_for: bool | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> tuple[Any, str, str | None]:
    """Serves ``demo`` with the limits: bounded queue, one job at a time, upload cap, no share link, no extra paths.

    In front of gradio, :class:`DemoGuard` caps every request body (``max_body_kb``; an upload's at
    ``max_file_size_mb``), holds each client to ``pending_per_client`` identifications at once and
    ``calls_per_minute`` (``call_burst`` at first), rate-limits uploads per client, keeps the upload cache under
    ``upload_cache_mb`` (oldest uploads deleted first), adds ``Retry-After`` to "queue full" and hides server paths
    from ``/config``. The REST routes that would skip the queue are closed (``api_open=False``), so every
    identification waits in the one queue. ``trust_forwarded_for`` (default: on a Space, where ``SPACE_ID`` is set)
    takes the client address from the ``X-Forwarded-For`` entry the proxy appended.
    """
    from starlette.middleware import Middleware

    if trust_forwarded_for is None:
        trust_forwarded_for = bool(os.environ.get("SPACE_ID"))
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    cache = UploadCache(folder, upload_cache_mb * 1024 * 1024)
    guard = Middleware(
        DemoGuard,
        blocks=demo,
        limiter=RateLimiter(uploads_per_minute, upload_burst),
        cache=cache,
        max_request_bytes=max_file_size_mb * 1024 * 1024 + UPLOAD_OVERHEAD_BYTES,
        call_limiter=RateLimiter(calls_per_minute, call_burst),
        pending_per_client=pending_per_client,
        max_body_bytes=max_body_kb * 1024,
        trust_forwarded_for=trust_forwarded_for,
    )
    # The example photos gradio copied into the cache when the page was built are never evicted.
    config_text = json.dumps(demo.config, default=str)
    cache.protected = set(re.findall(re.escape(str(folder)) + r"/[0-9a-f]{64}/[^\"'\\?#<>\s]+", config_text))
    demo.queue(default_concurrency_limit=1, max_size=queue_size, api_open=False)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=max_file_size_mb * gr.FileSize.MB,
        show_error=False,  # unexpected exceptions show a generic error; our gr.Error messages are always shown
        ssr_mode=False,  # no Node server
        mcp_server=False,
        app_kwargs={"middleware": [guard]},
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
    )


async def _plain(send: Any, status: int, text: str, *, retry_after: int | None = None, policy: str = "") -> None:
    """A refusal as gradio's own errors look (``{"detail": ...}``, which the page shows), with its limits."""
    body = json.dumps({"detail": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if policy:
        headers.append((b"x-ratelimit-policy", policy.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
