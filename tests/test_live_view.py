"""`ocs calls` and `ocs top` as a person sees them: real commands in a tmux terminal of a
fixed size, read back with `tmux capture-pane` until the expected text is on screen.

The calls are made through the HTTP API of the app under test; the commands run as
child processes on the same Redis and PostgreSQL (`ocs calls`) or against the app's
own /metrics (`ocs top`).
"""

import asyncio
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ocs.config import Settings
from ocs.live_view import (
    GRANTED,
    REFUSED,
    DecisionReading,
    LiveCall,
    calls_table,
    metrics_url,
    parse_decisions,
    rates,
    top_view,
)
from tests.conftest import RunningApp, add_plan
from tests.ports import free_port
from tests.serve_process import serve_env

SCREEN_TIMEOUT_S = 90.0  # the child opens the stores and loads the catalog first
OCS = [sys.executable, "-m", "ocs"]


class Pane:
    """One command in its own tmux server (a private socket), on a screen of a fixed size."""

    def __init__(self, tmp_path: Path, command: list[str], env: dict[str, str]) -> None:
        """Start ``command`` detached, 160 columns by 40 lines; the pane stays after it exits."""
        self.socket = f"ocs-test-{uuid.uuid4().hex[:12]}"
        conf = tmp_path / f"{self.socket}.conf"
        # A command that fails keeps its last screen (its error) for the assertion message.
        conf.write_text("set -g remain-on-exit on\n")
        self._tmux(
            "-f", str(conf), "new-session", "-d", "-s", "view", "-x", "160", "-y", "40",
            shlex.join(command), env=env,
        )  # fmt: skip
        self._socket_path = Path(self._tmux("display-message", "-p", "#{socket_path}").strip())

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        """The text on the pane's screen now."""
        return self._tmux("capture-pane", "-p", "-t", "view")

    async def wait_for(
        self, check: Callable[[str], bool], what: str, within: float = SCREEN_TIMEOUT_S
    ) -> str:
        """Poll the screen until ``check`` holds for it: that screen; fails with the last."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            shown = await asyncio.to_thread(self.screen)
            if check(shown):
                return shown
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{shown}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Stop this pane's tmux server and the command in it, and remove its socket."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        self._socket_path.unlink(missing_ok=True)


@pytest.fixture
def panes(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]], Pane]]:
    """Start commands in tmux panes; every pane is closed after the test."""
    started: list[Pane] = []

    def start(command: list[str], env: dict[str, str]) -> Pane:
        pane = Pane(tmp_path, command, env)
        started.append(pane)
        return pane

    yield start
    for pane in started:
        pane.close()


def row_of(screen: str, call_id: str) -> list[str]:
    """The cells of the table row of ``call_id`` (split on runs of spaces); [] if absent."""
    for line in screen.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if call_id in cells:
            return cells
    return []


async def funded(app: RunningApp, account_id: str, balance: str = "1.00") -> None:
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": balance}
    )
    assert status == 201, body


async def authorize(
    app: RunningApp, account_id: str, call_id: str, member: str = ""
) -> dict[str, Any]:
    payload = {"account": account_id, "destination": "447700900123", "call_id": call_id}
    if member:
        payload["member"] = member
    status, grant = await app.post("/v1/calls", payload)
    assert status == 201, grant
    return grant


# --- ocs calls -------------------------------------------------------------------------


async def test_calls_once_prints_every_live_call_with_its_grant_and_reservation(
    app: RunningApp, settings: Settings
) -> None:
    await add_plan(app.services)
    await funded(app, "1001")
    await funded(app, "2002", "5.00")
    status, body = await app.post("/v1/accounts/2002/members", {"member": "ext-7"})
    assert status == 201, body
    authorized_at = int(time.time())
    first = await authorize(app, "1001", "c-1")
    second = await authorize(app, "2002", "c-2", member="ext-7")
    status, answered = await app.post("/v1/calls/c-1/start", {})  # c-2 still rings
    assert status == 200, answered

    done = await asyncio.to_thread(
        subprocess.run, [*OCS, "calls", "--once"], env=serve_env(settings),
        capture_output=True, text=True, timeout=SCREEN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # 1.00 - 0.15 connect at 0.06/min on the 30/6 grid: 846 s, all 1.00 held.
    assert (first["max_duration"], first["reserved"]) == (846, "1.000000")
    one = row_of(done.stdout, "c-1")
    assert one[:4] == ["1001", "c-1", "447700900123", "UK Mobile"]
    # An HTTP call runs from its /start: at most the seconds the command took.
    minutes, _, seconds = one[4].partition(":")
    assert 0 <= int(minutes) * 60 + int(seconds) <= int(time.time()) - authorized_at, one
    assert one[5:] == ["14:06", "1.00 EUR"]
    # 5.00 - 0.15 buys 80 min 50 s, on the 30/6 grid 80:48; all 5.00 held.
    assert (second["max_duration"], second["reserved"]) == (4848, "5.000000")
    two = row_of(done.stdout, "c-2")
    # Not answered yet (no /start, decision 0055).
    assert two[:6] == ["2002", "c-2", "ext-7", "447700900123", "UK Mobile", "ringing"]
    assert two[6:] == ["1:20:48", "5.00 EUR"]
    assert "2 live calls" in done.stdout
    assert "reserved: 6.00 EUR" in done.stdout

    only = await asyncio.to_thread(
        subprocess.run, [*OCS, "calls", "--once", "--account", "2002"], env=serve_env(settings),
        capture_output=True, text=True, timeout=SCREEN_TIMEOUT_S,
    )  # fmt: skip
    assert only.returncode == 0, only.stderr
    assert row_of(only.stdout, "c-2") and not row_of(only.stdout, "c-1")
    assert "1 live call of account 2002" in only.stdout


def test_a_call_not_answered_yet_shows_as_ringing() -> None:
    call = LiveCall(
        account="1001",
        call_id="r-1",
        member=None,
        destination="4930123",
        zone="Germany",
        authorized_at=1_000.0,
        started_at=0,
        granted=3_725,
        reserved=1_250_000,
        currency="EUR",
    )
    console = Console(record=True, width=160)
    console.print(calls_table([call], now=1_010.0))
    shown = console.export_text()
    assert row_of(shown, "r-1") == [
        "1001", "r-1", "4930123", "Germany", "ringing", "1:02:05", "1.25 EUR",
    ]  # fmt: skip
    assert "1 live call " in shown and "reserved: 1.25 EUR" in shown


async def test_call_ids_holding_brackets_are_listed_exactly_as_given(
    app: RunningApp, settings: Settings
) -> None:
    # Printable text is a valid call id, brackets too; rich would read them as markup.
    await add_plan(app.services)
    await funded(app, "1001")
    await funded(app, "2002")
    await authorize(app, "1001", "abc[/x]def")
    await authorize(app, "2002", "call[bold]HIDDEN")

    done = await asyncio.to_thread(
        subprocess.run, [*OCS, "calls", "--once"], env=serve_env(settings),
        capture_output=True, text=True, timeout=SCREEN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert row_of(done.stdout, "abc[/x]def")[:2] == ["1001", "abc[/x]def"], done.stdout
    assert row_of(done.stdout, "call[bold]HIDDEN")[:2] == ["2002", "call[bold]HIDDEN"]
    assert "2 live calls" in done.stdout


def test_every_value_of_a_call_is_shown_as_written_not_as_markup() -> None:
    call = LiveCall(
        account="a[/]",
        call_id="[b]id",
        member="m[i]x",
        destination="[/red]4930",
        zone="Zone [bold]B",
        authorized_at=1_000.0,
        started_at=0,
        granted=60,
        reserved=1_000_000,
        currency="EUR",
    )
    console = Console(record=True, width=160)
    console.print(calls_table([call], now=1_010.0, account="a[/]"))
    shown = console.export_text()
    assert row_of(shown, "[b]id") == [
        "a[/]", "[b]id", "m[i]x", "[/red]4930", "Zone [bold]B", "ringing", "1:00", "1.00 EUR",
    ]  # fmt: skip
    assert "1 live call of account a[/] at" in shown


def test_calls_refuses_an_interval_it_cannot_use(settings: Settings) -> None:
    done = subprocess.run(
        [*OCS, "calls", "--interval", "0"], env=serve_env(settings), capture_output=True,
        text=True, timeout=SCREEN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--interval: expected seconds from 0.1 to 3600, got 0" in done.stderr


def test_a_screen_shows_the_oldest_calls_that_fit_and_counts_every_call() -> None:
    calls = [
        LiveCall("a", f"c-{n}", None, "447700900123", "UK Mobile", 100.0 + n, 100 + n, 846,
                 1_000_000, "EUR")
        for n in range(3)
    ]  # fmt: skip
    console = Console(record=True, width=160)
    console.print(calls_table(calls, now=200.0, limit=2))
    shown = console.export_text()
    assert row_of(shown, "c-0") and row_of(shown, "c-1") and not row_of(shown, "c-2")
    assert "3 live calls" in shown
    assert "the 2 oldest shown; reserved: 3.00 EUR" in shown


async def test_calls_view_refreshes_as_calls_come_and_go(
    app: RunningApp, settings: Settings, panes: Callable[[list[str], dict[str, str]], Pane]
) -> None:
    await add_plan(app.services)
    await funded(app, "1001")
    await funded(app, "3003")
    await authorize(app, "1001", "first")
    pane = panes([*OCS, "calls", "--interval", "0.2"], serve_env(settings))
    await pane.wait_for(
        lambda s: "1 live call " in s and row_of(s, "first") != [], "the first call"
    )

    await authorize(app, "3003", "second")
    shown = await pane.wait_for(lambda s: "2 live calls" in s, "the second call")
    assert row_of(shown, "second")[:2] == ["3003", "second"]

    status, body = await app.post("/v1/calls/first/stop", {"duration": 45})
    assert status == 200, body
    shown = await pane.wait_for(lambda s: "1 live call " in s, "the first call to go")
    assert not row_of(shown, "first") and row_of(shown, "second")


async def test_calls_view_of_one_account_shows_no_other(
    app: RunningApp, settings: Settings, panes: Callable[[list[str], dict[str, str]], Pane]
) -> None:
    await add_plan(app.services)
    await funded(app, "1001")
    await funded(app, "3003")
    pane = panes([*OCS, "calls", "--account", "3003", "--interval", "0.2"], serve_env(settings))
    await pane.wait_for(lambda s: "0 live calls of account 3003" in s, "the empty view")
    await authorize(app, "1001", "other")
    await authorize(app, "3003", "mine")
    shown = await pane.wait_for(lambda s: row_of(s, "mine") != [], "account 3003's call")
    assert "1 live call of account 3003" in shown
    assert not row_of(shown, "other")


# --- ocs top ---------------------------------------------------------------------------


def _reading(at: float, text: str) -> DecisionReading:
    return DecisionReading(at=at, counts=parse_decisions(text))


EXPOSITION = """\
# TYPE ocs_call_authorizations_total counter
ocs_call_authorizations_total{result="granted"} 10.0
ocs_call_authorizations_total{result="zero_balance"} 4.0
# TYPE ocs_radius_packets_total counter
ocs_radius_packets_total{result="accept",type="access"} 7.0
ocs_radius_packets_total{result="reject",type="access"} 3.0
ocs_radius_packets_total{result="ok",type="accounting-start"} 7.0
# TYPE ocs_radius_rejects_total counter
ocs_radius_rejects_total{reason="no_free_line",return_code="2"} 3.0
"""


def test_decisions_are_read_by_protocol_and_reason_from_the_exposition() -> None:
    assert parse_decisions(EXPOSITION) == {
        ("http", GRANTED, ""): 10.0,
        ("http", REFUSED, "zero_balance"): 4.0,
        ("radius", GRANTED, ""): 7.0,
        ("radius", REFUSED, "no_free_line"): 3.0,
    }


def test_the_decisions_series_is_read_instead_where_the_server_exports_it() -> None:
    text = (
        EXPOSITION
        + """\
# TYPE ocs_decisions_total counter
ocs_decisions_total{protocol="radius",reason="",result="granted"} 2.0
ocs_decisions_total{protocol="http",reason="zero_balance",result="refused"} 5.0
ocs_decisions_total{protocol="radius",reason="no_free_line",result="refused"} 1.0
"""
    )
    # The older series of the same decisions are not counted a second time.
    assert parse_decisions(text) == {
        ("radius", GRANTED, ""): 2.0,
        ("http", REFUSED, "zero_balance"): 5.0,
        ("radius", REFUSED, "no_free_line"): 1.0,
    }


def test_rates_are_growth_per_second_and_a_restart_counts_from_zero() -> None:
    before = _reading(100.0, EXPOSITION)
    after = _reading(
        102.0,
        EXPOSITION.replace("} 10.0", "} 16.0").replace('"zero_balance"} 4.0', '"zero_balance"} 1'),
    )
    assert rates(None, before) is None
    per_second = rates(before, after)
    assert per_second is not None
    assert per_second[("http", GRANTED, "")] == 3.0  # 6 more in 2 s
    assert per_second[("http", REFUSED, "zero_balance")] == 0.5  # reset: 1 since
    assert per_second[("radius", GRANTED, "")] == 0.0


def test_the_default_metrics_url_reaches_a_wildcard_listener_on_loopback() -> None:
    assert metrics_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/metrics"
    assert metrics_url("::", 9000) == "http://[::1]:9000/metrics"
    assert metrics_url("10.1.2.3", 8080) == "http://10.1.2.3:8080/metrics"


def test_top_shows_reasons_and_protocols_as_written_not_as_markup() -> None:
    text = """\
# TYPE ocs_decisions_total counter
ocs_decisions_total{protocol="[b]http",reason="",result="granted"} 2.0
ocs_decisions_total{protocol="[b]http",reason="odd[/]",result="refused"} 1.0
ocs_decisions_total{protocol="[b]http",reason="[bold]hidden",result="refused"} 1.0
"""
    console = Console(record=True, width=160)
    console.print(top_view("http://x/metrics", None, _reading(1.0, text)))
    shown = console.export_text()
    assert row_of(shown, "odd[/]") == ["odd[/]", "[b]http", "-", "1"]
    assert row_of(shown, "[bold]hidden") == ["[bold]hidden", "[b]http", "-", "1"]
    assert row_of(shown, "[b]http")[0] == "[b]http"


async def test_top_shows_decision_rates_and_refusals_by_reason(
    app: RunningApp, settings: Settings, panes: Callable[[list[str], dict[str, str]], Pane]
) -> None:
    await add_plan(app.services)
    await funded(app, "rich", "10.00")
    await funded(app, "poor", "0")
    url = str(app.client.make_url("/metrics"))
    response = await app.client.get("/metrics")
    # The counters are the test process's: earlier tests' decisions are in them too.
    before = parse_decisions(await response.text())
    refused_before = before.get(("http", REFUSED, "zero_balance"), 0.0)
    pane = panes([*OCS, "top", "--url", url, "--interval", "2"], serve_env(settings))
    await pane.wait_for(lambda s: "refusals by reason" in s, "the first reading")

    for n in range(3):
        status, body = await app.post(
            "/v1/calls", {"account": "poor", "destination": "447700900123", "call_id": f"p{n}"}
        )
        assert (status, body["error"]["reason"]) == (402, "zero_balance"), body
    await authorize(app, "rich", "r1")
    expected_total = f"{refused_before + 3:.0f}"

    def refusals_counted(screen: str) -> bool:
        row = row_of(screen, "zero_balance")
        # reason, protocol, per second, total: a reading that took in the 3 refusals.
        return row[1:2] == ["http"] and row[3:] == [expected_total] and float(row[2]) > 0

    shown = await pane.wait_for(refusals_counted, "the 3 refusals at a rate above 0")
    summary = row_of(shown, "http")
    assert summary[0] == "http" and float(summary[2]) > 0  # refused/s in the decisions table


async def test_top_keeps_showing_why_a_server_cannot_be_read(
    settings: Settings, panes: Callable[[list[str], dict[str, str]], Pane]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    pane = panes([*OCS, "top", "--url", url, "--interval", "0.2"], serve_env(settings))
    shown = await pane.wait_for(lambda s: "Connection refused" in s, "the error on screen")
    assert url in shown
