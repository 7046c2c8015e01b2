"""The OpenAI-compatible servers behind the gateway, and which one takes the next request.

Requests go to the backend with the fewest requests in flight from this process; ties go
round robin. A backend that refuses connections is skipped for `down_s` seconds and the
request goes to the next one (nothing was sent, so the retry cannot run a request twice);
when every backend refuses, the caller gets `BackendUnavailable` (HTTP 503). Each process (or
Ray Serve replica) balances on its own counts; no state is shared.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import httpx


class BackendUnavailable(Exception):
    """No backend accepted the connection."""


class BackendPool:
    def __init__(
        self,
        urls: list[str],
        client: httpx.AsyncClient,
        down_s: float = 2.0,
        clock=time.monotonic,
    ):
        if not urls:
            raise ValueError("at least one backend URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.client = client
        self.down_s = down_s
        self.clock = clock
        self.in_flight = [0] * len(self.urls)
        self.sent = [0] * len(self.urls)  # requests each backend accepted
        self._down_until = [float("-inf")] * len(self.urls)
        self._next = 0

    def order(self) -> list[int]:
        """Backends to try, best first: up before down, then fewest in flight, then round
        robin from the one after the last pick."""
        n, now, start = len(self.urls), self.clock(), self._next
        return sorted(
            range(n),
            key=lambda i: (self._down_until[i] > now, self.in_flight[i], (i - start) % n),
        )

    @asynccontextmanager
    async def request(self, method: str, path: str, **kwargs):
        """Send to the best backend (failing over on refused connections) and yield
        (backend url, streamed response); the response is closed on exit."""
        errors = []
        for i in self.order():
            request = self.client.build_request(method, self.urls[i] + path, **kwargs)
            self.in_flight[i] += 1
            try:
                try:
                    response = await self.client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                    self._down_until[i] = self.clock() + self.down_s
                    errors.append(f"{self.urls[i]} ({type(e).__name__}: {e or 'refused'})")
                    continue
                self._next = (i + 1) % len(self.urls)
                self.sent[i] += 1
                try:
                    yield self.urls[i], response
                finally:
                    await response.aclose()
                return
            finally:
                self.in_flight[i] -= 1
        raise BackendUnavailable("no backend accepted the connection: " + "; ".join(errors))
