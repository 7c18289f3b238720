"""Several model servers behind one engine: least-loaded routing, health ejection, dead-engine
detection and the adaptive in-flight limits.

A server is one OpenAI-compatible endpoint (``settings.vllm_urls``): one vLLM engine, whether it has
a GPU to itself or shares one with other engines.

Routing
    Each request goes to the healthy server with the fewest requests in flight relative to its
    limit (``in_flight / limit``; limits are equal unless adaptive control moved them); ties go
    round-robin, so equal servers share load evenly.

Ejection (a server stops getting requests)
    - at once on a connection error (refused, reset before an answer) or an HTTP 503;
    - when a health probe (``GET /health``, every ``health_probe_interval_s``) fails;
    - as a *dead engine* — ``/health`` answers 200 but requests hang — when either
      ``dead_after_timeouts`` requests in a row time out while another server answered more recently,
      or the server has had requests in flight for ``stall_after_s`` without sending a single byte
      while another server did. Ejecting a dead engine also aborts the requests still hanging on it
      (they fail at once with a TIMEOUT ``ModelServerError`` instead of waiting out
      ``request_timeout_s``), so their pages are retried elsewhere.

    A request that hits a failing server raises a transient error; the caller's retry policy sends
    the page again, and the pool routes the retry to another server.

Coming back
    Ejected servers are probed with ``GET /health`` every ``health_probe_interval_s``; a 200 brings
    them back. One ejected as a dead engine comes back *on probation*: one request at a time until
    one succeeds, because its ``/health`` said 200 all along.

When every server is ejected, a request still goes to the one ejected longest ago if it has none in
flight (so pages are not failed in bulk between probes, and a recovery is noticed at once);
otherwise ``pick`` raises ``ModelServerError`` (code CONNECTION).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from ..errors import ErrorCode, ModelServerError
from .adaptive import ControllerConfig, MetricsScraper, ServerLoad, next_limit

log = logging.getLogger(__name__)

__all__ = ["Server", "ServerPool", "ServerStats", "Lease"]


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of one server, for metrics and status pages."""

    url: str
    healthy: bool
    probation: bool
    ejected_reason: str
    in_flight: int
    limit: int
    running: float | None
    waiting: float | None
    kv_usage: float | None
    requests: int
    failures: int
    ejections: int


@dataclass(eq=False)
class Server:
    """The pool's view of one model server."""

    url: str
    limit: int
    in_flight: int = 0
    peak_in_flight: int = 0
    """Most requests open at once since the last scrape (the controller's view of "limit in use")."""
    healthy: bool = True
    ejected_reason: str = ""
    ejected_at: float = 0.0
    probation: bool = False
    consecutive_timeouts: int = 0
    last_success: float = 0.0
    last_progress: float = field(default_factory=time.monotonic)
    model: str | None = None
    max_model_len: int | None = None
    load: ServerLoad | None = None
    scraper: MetricsScraper | None = None
    requests: int = 0
    failures: int = 0
    ejections: int = 0
    _deadlines: set[asyncio.Timeout] = field(default_factory=set)

    @property
    def available(self) -> bool:
        return self.healthy and not (self.probation and self.in_flight >= 1)


class Lease:
    """One request's hold on a server; report how it went, then release (``ServerPool.lease``)."""

    __slots__ = ("pool", "server", "_deadline", "_done")

    def __init__(self, pool: ServerPool, server: Server) -> None:
        self.pool = pool
        self.server = server
        self._deadline: asyncio.Timeout | None = None
        self._done = False

    def watch(self, deadline: asyncio.Timeout) -> None:
        """Register the request's timeout scope, so ejecting a dead server can expire it at once."""
        self._deadline = deadline
        self.server._deadlines.add(deadline)

    def progress(self) -> None:
        """Bytes arrived from the server (it is alive)."""
        self.server.last_progress = time.monotonic()

    def success(self) -> None:
        s = self.server
        now = time.monotonic()
        s.last_success = s.last_progress = now
        s.consecutive_timeouts = 0
        if s.probation:
            s.probation = False
            log.info("model server passed probation", extra={"server": s.url})

    def connection_failed(self, reason: str) -> None:
        """Refused, reset or 503: the server is out until a health probe brings it back."""
        self.server.failures += 1
        self.pool.eject(self.server, reason)

    def timed_out(self) -> None:
        s = self.server
        s.failures += 1
        s.consecutive_timeouts += 1
        if s.healthy and s.probation:
            self.pool.eject(s, "dead engine: timed out again on probation", dead=True)
        elif s.healthy and s.consecutive_timeouts >= self.pool.dead_after_timeouts and self.pool._others_answer(s, s.last_success):
            self.pool.eject(s, f"dead engine: {s.consecutive_timeouts} requests in a row timed out", dead=True)

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        self.server.in_flight -= 1
        if self._deadline is not None:
            self.server._deadlines.discard(self._deadline)


class ServerPool:
    """Routes requests over ``urls`` and keeps each server's health and limit. Start with ``start``
    (health probes, metrics scrapes), stop with ``aclose``. Not thread-safe: one event loop."""

    def __init__(
        self,
        urls: list[str],
        session: aiohttp.ClientSession,
        *,
        max_in_flight: int,
        health_probe_interval_s: float = 5.0,
        probe_timeout_s: float = 5.0,
        dead_after_timeouts: int = 3,
        stall_after_s: float = 120.0,
        adaptive: bool = True,
        controller: ControllerConfig | None = None,
        metrics_interval_s: float = 1.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one model server URL is needed")
        self.session = session
        self.max_in_flight = max_in_flight
        share = max(1, max_in_flight // len(urls))
        self.servers = [Server(url=u.rstrip("/"), limit=share) for u in urls]
        self.health_probe_interval_s = health_probe_interval_s
        self.probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self.dead_after_timeouts = dead_after_timeouts
        self.stall_after_s = stall_after_s
        self.adaptive = adaptive
        self.controller = controller or ControllerConfig(
            min_in_flight=min(4, max_in_flight), max_in_flight=max_in_flight
        )
        self.metrics_interval_s = metrics_interval_s
        self.headers = headers or {}
        self._rr = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        if adaptive:
            for s in self.servers:
                s.scraper = MetricsScraper(session, s.url, timeout_s=min(2.0, probe_timeout_s), headers=self.headers)

    # --- routing -------------------------------------------------------------------------------

    def pick(self) -> Server:
        """The least-loaded available server (ties round-robin); ModelServerError when none is."""
        servers = self.servers
        n = len(servers)
        start = next(self._rr) % n
        best: Server | None = None
        best_key = 0.0
        for i in range(n):
            s = servers[(start + i) % n]
            if not s.available:
                continue
            key = s.in_flight / s.limit
            if best is None or key < best_key:
                best, best_key = s, key
        if best is None:
            # Every server is out. Failing at once would only burn the page's attempts until the next
            # probe; try the one out longest instead (one request at a time), which also notices a
            # recovery before the probe does.
            spare = [s for s in servers if s.in_flight == 0]
            if spare:
                return min(spare, key=lambda s: s.ejected_at)
            reasons = "; ".join(f"{s.url}: {s.ejected_reason or 'on probation, busy'}" for s in servers)
            raise ModelServerError(f"no model server available ({reasons})", code=ErrorCode.CONNECTION)
        return best

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        server = self.pick()
        if server.in_flight == 0:
            server.last_progress = time.monotonic()  # the stall clock runs only while requests are open
        server.in_flight += 1
        if server.in_flight > server.peak_in_flight:
            server.peak_in_flight = server.in_flight
        server.requests += 1
        lease = Lease(self, server)
        try:
            yield lease
        finally:
            lease.release()

    # --- health --------------------------------------------------------------------------------

    def eject(self, server: Server, reason: str, *, dead: bool = False) -> None:
        if not server.healthy:
            return
        server.healthy = False
        server.ejected_reason = reason
        server.ejected_at = time.monotonic()
        server.ejections += 1
        server.probation = dead or server.probation
        log.warning("model server ejected", extra={"server": server.url, "reason": reason})
        if dead:
            # Requests still hanging on a dead engine would each wait out request_timeout_s.
            loop = asyncio.get_running_loop()
            for deadline in list(server._deadlines):
                with contextlib.suppress(RuntimeError):
                    deadline.reschedule(loop.time())

    def readmit(self, server: Server) -> None:
        if server.healthy:
            return
        server.healthy = True
        server.consecutive_timeouts = 0
        server.last_progress = time.monotonic()
        log.warning("model server back in the pool", extra={"server": server.url, "probation": server.probation, "was": server.ejected_reason})
        server.ejected_reason = ""

    def _others_answer(self, server: Server, since: float) -> bool:
        """Another healthy server succeeded after ``since``: the fault is this server's, not the network's or ours."""
        return any(o is not server and o.healthy and o.last_success > since for o in self.servers)

    async def probe(self, server: Server) -> bool:
        """``GET /health``: True on 200."""
        try:
            async with self.session.get(server.url + "/health", timeout=self.probe_timeout, headers=self.headers) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def check_once(self) -> None:
        """One round of health probes and the dead-engine stall check (the health loop's body)."""
        now = time.monotonic()
        stalled = []
        for s in self.servers:
            if s.healthy and s.in_flight > 0 and now - s.last_progress > self.stall_after_s and self._others_answer(s, s.last_progress):
                self.eject(s, f"dead engine: no bytes for {now - s.last_progress:.1f}s with {s.in_flight} requests in flight", dead=True)
                stalled.append(s)
        results = await asyncio.gather(*(self.probe(s) for s in self.servers))
        for s, ok in zip(self.servers, results, strict=True):
            if s in stalled:
                continue  # its /health says 200 anyway; it sits out one probe interval at least
            if ok:
                self.readmit(s)
            elif s.healthy:
                self.eject(s, "health probe failed")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_probe_interval_s)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any one probe's bug
                log.exception("health probe round failed")

    # --- adaptive in-flight --------------------------------------------------------------------

    async def scrape_once(self) -> None:
        """Scrape every server's /metrics once and move its limit (the metrics loop's body)."""
        servers = [s for s in self.servers if s.scraper is not None and s.scraper.supported is not False and s.healthy]
        loads = await asyncio.gather(*(s.scraper.scrape() for s in servers if s.scraper is not None))
        for s, load in zip(servers, loads, strict=True):
            s.load = load
            if load is not None:
                # The peak, not the instant: pages finish and are replaced between scrapes, so the
                # instant count under-reads a limit that is fully in use.
                s.limit = next_limit(s.limit, load, max(s.in_flight, s.peak_in_flight), self.controller)
            s.peak_in_flight = s.in_flight

    async def _metrics_loop(self) -> None:
        while True:
            try:
                await self.scrape_once()
            except Exception:  # noqa: BLE001
                log.exception("metrics scrape round failed")
            await asyncio.sleep(self.metrics_interval_s)

    def suggested_in_flight(self) -> int | None:
        """Total requests to keep in flight: the sum of the healthy servers' limits, within
        [controller.min_in_flight, max_in_flight]; None when no server exports queue metrics."""
        if not self.adaptive or not any(s.scraper is not None and s.scraper.supported for s in self.servers):
            return None
        total = sum(s.limit for s in self.servers if s.healthy)
        return max(self.controller.min_in_flight, min(self.max_in_flight, total))

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._health_loop(), name="ocr-stream-health"))
        if self.adaptive:
            self._tasks.append(asyncio.create_task(self._metrics_loop(), name="ocr-stream-metrics"))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    @property
    def healthy(self) -> bool:
        return any(s.healthy for s in self.servers)

    def stats(self) -> list[ServerStats]:
        return [
            ServerStats(
                url=s.url, healthy=s.healthy, probation=s.probation, ejected_reason=s.ejected_reason,
                in_flight=s.in_flight, limit=s.limit,
                running=s.load.running if s.load else None, waiting=s.load.waiting if s.load else None,
                kv_usage=s.load.kv_usage if s.load else None,
                requests=s.requests, failures=s.failures, ejections=s.ejections,
            )
            for s in self.servers
        ]
