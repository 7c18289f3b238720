"""The in-flight budget: how many pages a worker process holds at once.

``limit`` is ``max_in_flight``, or, with adaptive in-flight on, the smaller of that and what the
engines suggest (each DeepSeek engine sizes its wish from the servers' running and waiting
requests). ``held`` counts pages taken from Kafka and not finished, including those waiting on a
retry timer: they hold their offset and their memory, and when a server pushes back (429/503) it
is right that fewer new pages come in. When nothing is free the worker pauses its partitions.

Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable


class InFlightBudget:
    def __init__(self, max_in_flight: int, *, adaptive: bool = True) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.adaptive = adaptive
        self.limit = max_in_flight
        self.held = 0
        """Pages taken and not finished (running, waiting to run, or waiting on a retry timer)."""
        self.active = 0
        """Pages being worked on (fetch, model, store, publish, or a retry timer)."""

    def update(self, suggestions: Iterable[int | None]) -> int:
        """Recompute the limit from the engines' suggestions (None: no opinion). With several
        engines the wishes add up, since each has its own servers."""
        if not self.adaptive:
            self.limit = self.max_in_flight
            return self.limit
        wishes = list(suggestions)
        if not wishes or any(w is None for w in wishes):
            self.limit = self.max_in_flight
        else:
            self.limit = max(1, min(self.max_in_flight, sum(int(w) for w in wishes if w is not None)))
        return self.limit

    def credits(self, in_transit: int = 0) -> int:
        """How many more records may be taken from Kafka now."""
        return self.limit - self.held - in_transit

    def can_start(self) -> bool:
        return self.active < self.limit
