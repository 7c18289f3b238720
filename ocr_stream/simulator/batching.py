"""A pure timing model of vLLM's continuous batching, in model seconds (no clock, no I/O).

The engine holds up to ``max_num_seqs`` running sequences; requests beyond that wait in a FIFO queue.
Time passes in decode steps: every running sequence gains one token per step, and a step takes
``step_s + plain_seq_s * n_plain + ngram_seq_s * n_ngram`` seconds, where ``n_ngram`` counts the
sequences that asked for vLLM's per-request n-gram logits processor (it runs in Python once per
sequence per step, which is what makes it expensive). When a request is admitted, its prefill
(``prefill_token_s`` per prompt token, nearly all of them image tokens) stalls decoding for everyone,
as the real engine's eager vision encoder does.

Calibration (:data:`H100`): the five one-engine measurements of ../shared/gpu/measured-2026-11-27.md
(vLLM 0.26, DeepSeek-OCR dummy weights, 1,000 output tokens a page, ignore_eos) fitted by least
squares with the plain per-sequence cost pinned at 20 us (the table cannot separate it from prefill):

    configuration                       measured   model
    n-gram on,    8 in flight, 903 img     1.70     1.69 pages/s
    n-gram on,   64 in flight, 903 img     3.20     3.33
    n-gram on,  256 in flight, 903 img     3.70     3.72
    n-gram off, 256 in flight, 903 img     5.55     5.44
    n-gram on,  256 in flight, 273 img     6.30     6.13

It also reproduces the engine log's decode peak of 7-9k tokens/s at batch 256 with n-gram on
(29 ms a step). Closed-loop throughput at ``n`` in flight, for mean output ``T`` tokens and ``P``
prompt tokens, is ``n / (T * step(n) + n * P * prefill_token_s)``: :func:`capacity_pages_per_s`.

Sequences finish at a known step, so :class:`BatchModel` jumps from event to event instead of
ticking every step: cost is O(log n) per request, whatever the speed.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timing:
    """Cost constants of one engine, in seconds of model time."""

    step_s: float = 2.66e-3
    """Fixed cost of one decode step (scheduling, kernel launches, sampling)."""
    plain_seq_s: float = 2.0e-5
    """Added to a step per running sequence without the n-gram processor."""
    ngram_seq_s: float = 1.05e-4
    """Added to a step per running sequence with the n-gram processor (vllm_xargs ngram_size)."""
    prefill_token_s: float = 1.68e-4
    """Decode stall per prompt token when a request is admitted (vision encoder + prefill)."""

    def step_time(self, n_plain: int, n_ngram: int) -> float:
        """Seconds one decode step takes with this batch."""
        return self.step_s + self.plain_seq_s * n_plain + self.ngram_seq_s * n_ngram

    def scaled(self, factor: float) -> Timing:
        """The same engine ``factor`` times slower (``factor`` < 1: faster)."""
        return Timing(self.step_s * factor, self.plain_seq_s * factor, self.ngram_seq_s * factor, self.prefill_token_s * factor)


H100 = Timing()
"""One vLLM 0.26 engine on one H100 80GB serving DeepSeek-OCR with the recipe flags."""


def capacity_pages_per_s(
    timing: Timing,
    *,
    in_flight: int,
    max_num_seqs: int = 256,
    output_tokens: float = 1000.0,
    prompt_tokens: float = 916.0,
    ngram_fraction: float = 0.0,
) -> float:
    """Steady-state pages/s of one engine kept at ``in_flight`` requests (closed loop).

    In flight beyond ``max_num_seqs`` only waits, so it adds nothing. ``ngram_fraction`` is the
    share of requests that ask for the n-gram processor (0: none, 1: vLLM's recipe).
    """
    n = min(in_flight, max_num_seqs)
    if n <= 0:
        return 0.0
    n_ng = n * ngram_fraction
    step = timing.step_s + timing.plain_seq_s * (n - n_ng) + timing.ngram_seq_s * n_ng
    cycle = output_tokens * step + n * prompt_tokens * timing.prefill_token_s
    return n / cycle


@dataclass
class SimRequest:
    """One request inside the model. ``output_tokens`` is what it will generate before finishing."""

    req_id: str
    prompt_tokens: int
    output_tokens: int
    ngram: bool = False
    arrival: float = 0.0
    admitted: float | None = None
    finished: float | None = None
    start_step: int = 0
    aborted: bool = False


@dataclass
class Finished:
    """A request that left the engine: generated all its tokens, or was aborted."""

    request: SimRequest
    generated: int
    reason: str  # "done" | "abort"


@dataclass
class BatchModel:
    """Continuous batching in model time. Drive it with :meth:`submit`, :meth:`abort` and
    :meth:`advance`; read it with :meth:`generated`, :meth:`next_event_time` and the counters."""

    timing: Timing = field(default_factory=Timing)
    max_num_seqs: int = 256

    clock: float = 0.0
    """Model time up to which the engine's work is accounted for (a step boundary, or ``to``)."""
    steps: int = 0
    """Decode steps run so far; a running request has generated ``steps - start_step`` tokens."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        self._waiting: deque[SimRequest] = deque()
        self._running: dict[str, SimRequest] = {}
        self._finish_heap: list[tuple[int, int, SimRequest]] = []
        self._seq = itertools.count()
        self._n_ngram = 0
        self._stall = 0.0  # prefill time still owed before the next decode step
        self._sum_start = 0  # sum of start_step over running requests: generated total in O(1)
        self._unclaimed: list[Finished] = []  # finished since the last take_finished()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0  # tokens of requests that have left the engine
        self.finished_total = 0
        self.aborted_total = 0
        self.running_seconds = 0.0
        """Integral of the running count over model time: its change over an interval divided by
        the interval is the mean batch, i.e. how full a client kept the engine."""

    # --- reading -------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_ngram_running(self) -> int:
        return self._n_ngram

    def running_tokens(self) -> int:
        """Prompt + generated tokens held by running sequences (their KV cache footprint)."""
        gen = len(self._running) * self.steps - self._sum_start
        return gen + sum(r.prompt_tokens for r in self._running.values())

    def generation_tokens(self) -> int:
        """Every token generated so far, including those of requests still running."""
        return self.generation_tokens_total + len(self._running) * self.steps - self._sum_start

    def generated(self, req: SimRequest) -> int:
        """Tokens ``req`` has generated so far (all of them once finished)."""
        if req.req_id in self._running:
            return min(self.steps - req.start_step, req.output_tokens)
        if req.finished is not None and not req.aborted:
            return req.output_tokens
        return 0

    def step_time(self) -> float:
        n_plain = len(self._running) - self._n_ngram
        return self.timing.step_time(n_plain, self._n_ngram)

    def next_event_time(self) -> float | None:
        """When the next running request will finish if nothing arrives; None when idle."""
        while self._finish_heap and self._finish_heap[0][2].aborted:
            heapq.heappop(self._finish_heap)
        if not self._finish_heap:
            return None
        steps_left = self._finish_heap[0][0] - self.steps
        return self.clock + self._stall + steps_left * self.step_time()

    def take_finished(self) -> list[Finished]:
        """Every request that finished (not aborted) since the last call, whichever call advanced
        the model: ``submit`` and ``abort`` advance it too, and their finishes must not be lost."""
        out, self._unclaimed = self._unclaimed, []
        return out

    # --- driving -------------------------------------------------------------------------------

    def submit(self, req: SimRequest, now: float) -> None:
        """Queue ``req`` at model time ``now`` (``advance(now)`` first, so time is monotonic)."""
        self.advance(now)
        req.arrival = now
        req.output_tokens = max(1, req.output_tokens)
        self.prompt_tokens_total += req.prompt_tokens
        self._waiting.append(req)
        self._admit()

    def abort(self, req: SimRequest, now: float) -> Finished | None:
        """Remove ``req`` at ``now`` (client went away): its slot is free at once."""
        self.advance(now)
        if req.finished is not None:
            return None
        req.aborted = True
        req.finished = now
        self.aborted_total += 1
        if req.req_id in self._running:
            gen = self.generated(req)
            self._remove_running(req)
            self.generation_tokens_total += gen
            self._admit()
            return Finished(req, gen, "abort")
        try:
            self._waiting.remove(req)
        except ValueError:
            pass
        return Finished(req, 0, "abort")

    def advance(self, to: float) -> list[Finished]:
        """Run the engine up to model time ``to``; return the requests that finished meanwhile."""
        out: list[Finished] = []
        while True:
            if not self._running:
                self._stall = 0.0
                self.clock = max(self.clock, to)
                return out
            if self._stall > 0.0:
                if self.clock + self._stall > to:
                    self._stall -= to - self.clock
                    self.running_seconds += len(self._running) * (to - self.clock)
                    self.clock = to
                    return out
                self.running_seconds += len(self._running) * self._stall
                self.clock += self._stall
                self._stall = 0.0
            st = self.step_time()
            # The heap may hold aborted requests (lazy deletion).
            while self._finish_heap and self._finish_heap[0][2].aborted:
                heapq.heappop(self._finish_heap)
            target = self._finish_heap[0][0]
            fit = int((to - self.clock) / st + 1e-9) if to > self.clock else 0
            k = min(fit, target - self.steps)
            self.steps += k
            self.clock += k * st
            self.running_seconds += len(self._running) * k * st
            if self.steps < target:
                return out
            while self._finish_heap and self._finish_heap[0][0] <= self.steps:
                _, _, req = heapq.heappop(self._finish_heap)
                if req.aborted:
                    continue
                req.finished = self.clock
                self._remove_running(req)
                self.generation_tokens_total += req.output_tokens
                self.finished_total += 1
                fin = Finished(req, req.output_tokens, "done")
                out.append(fin)
                self._unclaimed.append(fin)
            self._admit()

    # --- internals -----------------------------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_num_seqs:
            req = self._waiting.popleft()
            req.admitted = self.clock
            # Decoding resumes after the prefill stall; the first token comes with the next step.
            req.start_step = self.steps
            self._running[req.req_id] = req
            self._sum_start += req.start_step
            if req.ngram:
                self._n_ngram += 1
            self._stall += req.prompt_tokens * self.timing.prefill_token_s
            heapq.heappush(self._finish_heap, (req.start_step + req.output_tokens, next(self._seq), req))

    def _remove_running(self, req: SimRequest) -> None:
        del self._running[req.req_id]
        self._sum_start -= req.start_step
        if req.ngram:
            self._n_ngram -= 1


def simulate_closed_loop(
    timing: Timing,
    *,
    in_flight: int,
    pages: int | None = None,
    max_num_seqs: int = 256,
    output_tokens: int = 1000,
    prompt_tokens: int = 916,
    ngram: bool = False,
    workload: Sequence[tuple[int, int]] | None = None,
) -> float:
    """Pages/s (model time) of an ideal client that keeps ``in_flight`` requests open until all
    pages are done, by running :class:`BatchModel` event by event (no clock). Pages are
    ``workload``'s (prompt, output) token pairs in order, or ``pages`` identical ones. Ramp-up
    and the tail are included: with ``in_flight >= len(workload)`` (everything sent at once) this
    is the fastest this engine can possibly finish that exact workload."""
    jobs = list(workload) if workload is not None else [(prompt_tokens, output_tokens)] * (pages or 0)
    if pages is not None:
        jobs = jobs[:pages]
    model = BatchModel(timing=timing, max_num_seqs=max_num_seqs)
    ids = itertools.count()
    queue = deque(jobs)

    def send(now: float) -> None:
        prompt, out = queue.popleft()
        model.submit(SimRequest(f"r{next(ids)}", prompt, out, ngram), now)

    for _ in range(min(in_flight, len(queue))):
        send(0.0)
    done = 0
    t_end = 0.0
    while done < len(jobs):
        t = model.next_event_time()
        if t is None:
            break
        model.advance(t)
        finished = model.take_finished()  # also those that submit() itself runs into
        while finished:
            done += len(finished)
            t_end = model.clock
            for _ in finished:
                if queue:
                    send(model.clock)
            finished = model.take_finished()
    return done / t_end if t_end > 0 else 0.0
