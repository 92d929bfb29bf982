"""An HTTP hop between a switch and ocs that fails chosen requests, for the switch tests.

Not a test module. tests/test_kamailio_switch.py puts it between a real Kamailio and
ocs, tests/test_asterisk_dialplan.py between the Asterisk dialplan (as
tests/asterisk_helpers.py runs it) and ocs: a start or a stop it fails is one an ocs
restarting, busy or cut off would have failed.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.ports import free_port


@dataclass
class Relay:
    """An HTTP hop between a switch and ocs. It fails the first ``/start`` of each call
    with ``start_failure`` (None: forwards it) and the first ``stop_failures`` stops of
    each call (None: every one) with ``stop_failure``, and forwards the rest as sent. A
    failure is an HTTP status it answers, as an ocs busy, restarting or cut off would,
    or 0: it drops the connection unanswered. With ``slow_s`` a failure is answered
    only that many seconds later, as an ocs too slow would: past the switch's timeout,
    which gave up on it (recorded 0). ``stall`` holds the requests whose path ends
    with one of the suffixes given, as a stalled ocs would, until ``resume``; they
    are then forwarded (the switch may have given up on them). It keeps each
    request's path (decoded) and the status the switch got (0: none)."""

    ocs_url: str
    start_failure: int | None
    stop_failure: int
    stop_failures: int | None
    slow_s: float
    seen: list[tuple[str, int]]
    http: aiohttp.ClientSession
    stalled: tuple[str, ...] = ()
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0

    def stall(self, *suffixes: str) -> None:
        """Hold from now on every request whose path ends with one of ``suffixes``."""
        self.stalled = suffixes
        self.resumed.clear()

    def resume(self) -> None:
        """Forward the held requests, and hold none from now on."""
        self.stalled = ()
        self.resumed.set()

    def failure(self, path: str) -> int | None:
        """How the request to ``path`` is failed now; None: it is forwarded."""
        earlier = sum(1 for seen, _ in self.seen if seen == path)
        if path.endswith("/start") and earlier == 0:
            return self.start_failure
        if path.endswith("/stop") and (self.stop_failures is None or earlier < self.stop_failures):
            return self.stop_failure
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward ``request`` to ocs, or fail it."""
        path = request.path  # decoded: the call id as the switch has it
        if self.stalled and path.endswith(self.stalled):
            self.held += 1
            await self.resumed.wait()
        failing = self.failure(path)
        if failing is not None:
            # Kept before any wait: a try sent again meanwhile counts this one as earlier.
            self.seen.append((path, 0 if self.slow_s else failing))
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
            if failing == 0 and request.transport is not None:
                request.transport.close()
            reason = "unavailable" if failing >= 500 or failing == 0 else "invalid"
            # As ocs's own error answers: the HTTP status in error.code too.
            error = {"code": failing or 503, "reason": reason, "sip_status": 503}
            return web.json_response({"error": error}, status=failing or 503)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type")
        }
        body = await request.read()
        async with self.http.request(
            request.method, self.ocs_url + request.raw_path, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            self.seen.append((path, answer.status))
            return web.Response(
                body=payload, status=answer.status, content_type=answer.content_type
            )

    def statuses(self, suffix: str) -> list[int]:
        """The statuses the switch got for the requests whose path ends with ``suffix``."""
        return [status for path, status in self.seen if path.endswith(suffix)]


@contextlib.asynccontextmanager
async def relay_to(
    ocs_url: str,
    *,
    start_failure: int | None = None,
    stop_failure: int = 503,
    stop_failures: int | None = None,
    slow_s: float = 0.0,
) -> AsyncIterator[tuple[Relay, str]]:
    """A ``Relay`` in front of ``ocs_url``, listening on 127.0.0.1: it and its URL."""
    async with aiohttp.ClientSession() as http:
        relay = Relay(ocs_url, start_failure, stop_failure, stop_failures, slow_s, [], http)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield relay, f"http://127.0.0.1:{port}"
        finally:
            relay.resume()  # else the cleanup would wait for the held requests
            await runner.cleanup()
