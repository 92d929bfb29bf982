"""deploy/grafana/ocs.json and deploy/prometheus/alerts.yml against a real Prometheus.

A Prometheus (Debian's ``prometheus`` package; CI installs it, and without it this test
fails rather than skips) scrapes a running ocs every second: the HTTP app and a RADIUS
server on real ports, with the state sampler running as ``ocs serve`` runs it, under a
little load (calls granted, stopped and refused over HTTP and RADIUS, calls left live,
an invoice run). Once it has scraped a few times, every query of the dashboard and every
alert expression is evaluated through its HTTP API: each must parse, each dashboard
query must return series, and so must every series an alert reads. Prometheus loads the
alert rules itself and evaluates them without error.
"""

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (from schemathesis), no stubs

from ocs.billing.cycles import PlanBilling
from ocs.billing.store import set_plan_billing
from ocs.state_metrics import StateSampler
from tests.billing_helpers import EUR, customer, monthly, run
from tests.conftest import RunningRadius, eventually
from tests.helpers import auth, new_account
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "ocs.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
GERMANY = "4930901820"

# What Grafana puts in place of its interval variables before it sends a query.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels too."""

    def panels(found: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in found:
            yield panel
            yield from panels(panel.get("panels", []))

    queries = []
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for macro, value in GRAFANA_MACROS.items():
                expr = expr.replace(macro, value)
            queries.append((panel["title"], expr))
    return queries


def alert_expressions() -> list[tuple[str, str]]:
    """(alert name, PromQL) of every rule of alerts.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def selectors(expr: str) -> set[str]:
    """The series selectors an expression reads (``name{matchers}``), offsets and ranges
    aside: each one must find series, or its alert could never fire."""
    return {
        match.group(0)
        for match in re.finditer(r"\b(?:ocs_[a-z0-9_]+|up)(?:\{[^}]*\})?", expr)
        if expr[match.end() : match.end() + 1] != "("  # a function, not a series
    }


@dataclass
class Prometheus:
    """A Prometheus server on 127.0.0.1, queried over its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its ``data`` (the query's error raised, with the log)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) an expression evaluates to now."""
        data = await self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


def launch(directory: Path, target: str) -> Prometheus:
    """Start Prometheus in ``directory``, scraping ``target`` every second, evaluating
    ocs's alert rules every second."""
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus is missing: apt-get install prometheus"
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ocs", "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Prometheus(f"http://127.0.0.1:{port}", process, log)


def stop(prometheus: Prometheus) -> None:
    """Stop Prometheus (killed if it will not)."""
    prometheus.process.terminate()
    try:
        prometheus.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        prometheus.process.kill()
        prometheus.process.wait()


@pytest.fixture
async def prometheus(nas: RunningRadius, tmp_path: Path) -> AsyncIterator[Prometheus]:
    """Prometheus scraping the app's /metrics every second, with ocs's alert rules."""
    server = launch(tmp_path, f"127.0.0.1:{nas.app.client.server.port}")
    try:
        yield server
    finally:
        stop(server)


async def ready(prometheus: Prometheus) -> bool:
    """Prometheus answers (and has not died)."""
    assert prometheus.process.poll() is None, prometheus.log.read_text()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{prometheus.url}/-/ready") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def calls(nas: RunningRadius, round_: int) -> None:
    """A little traffic: granted, stopped and refused calls over HTTP and RADIUS, two
    calls left live, one RADIUS request refused."""
    app = nas.app
    for body, expected in (
        ({"account": "rich", "destination": GERMANY}, 201),
        ({"account": "poor", "destination": GERMANY}, 402),
    ):
        status, answer = await app.post("/v1/calls", body)
        assert status == expected, answer
    status, call = await app.post("/v1/calls", {"account": "rich", "destination": GERMANY})
    assert status == 201, call
    status, _ = await app.post(f"/v1/calls/{call['call_id']}/stop", {"duration": 12})
    assert status == 200
    pairs = [("NAS-IP-Address", "127.0.0.1"), ("Called-Station-Id", GERMANY)]
    reply = await auth(nas, [*pairs, ("User-Name", "rich"), ("Acct-Session-Id", f"live-{round_}")])
    assert reply.code == "Access-Accept", reply.output
    reply = await auth(nas, [*pairs, ("User-Name", "nobody"), ("Acct-Session-Id", f"no-{round_}")])
    assert reply.code == "Access-Reject", reply.output


async def test_every_dashboard_query_and_alert_expression_on_a_real_prometheus(
    nas: RunningRadius, prometheus: Prometheus
) -> None:
    services = nas.app.services
    await new_account(nas.app, "rich", balance="1000.00", max_lines=4)
    await new_account(nas.app, "poor", balance="0")
    # An invoice run drafted (and finished) for one customer.
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1),
    )
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "billed", "rent", date(2026, 3, 1))
    await run(services, "2026-03")
    stopping = asyncio.Event()
    sampler = asyncio.create_task(StateSampler.of(services, interval=0.5).run(stopping))
    try:
        await calls(nas, 1)
        await eventually(lambda: ready(prometheus), within=60, what="Prometheus to start")

        async def scrapes() -> int:
            found = await prometheus.query('count_over_time(up{job="ocs"}[10m])')
            return int(float(found[0]["value"][1])) if found else 0

        async def scraped(at_least: int) -> bool:
            # The billing state is sampled every third pass: wait for it too.
            return await scrapes() >= at_least and bool(await prometheus.query("ocs_billing_runs"))

        await eventually(lambda: scraped(3), within=60, what="three scrapes of ocs")
        await calls(nas, 2)  # more traffic between scrapes: rates are not all zero
        done = await scrapes()
        await eventually(lambda: scraped(done + 2), within=15, what="two more scrapes")

        empty = [
            f"{title}: {expr}"
            for title, expr in dashboard_queries()
            if not await prometheus.query(expr)
        ]
        assert empty == [], "dashboard queries that return no series"

        unread = [
            f"{name}: {selector}"
            for name, expr in alert_expressions()
            for selector in sorted(selectors(expr))
            if not await prometheus.query(selector)
        ]
        assert unread == [], "series the alerts read that ocs does not export"
        firing = sorted(
            [name for name, expr in alert_expressions() if await prometheus.query(expr)]
        )
        # A healthy ocs under a little load: no alert's condition holds.
        assert firing == []

        # What the panels show is what happened.
        # (Counters live as long as the process: what grew while Prometheus watched.)
        refused = await prometheus.query(
            'sum by (protocol, reason) (increase(ocs_decisions_total{result="refused"}[10m])) > 0'
        )
        assert {(r["metric"]["protocol"], r["metric"]["reason"]) for r in refused} == {
            ("http", "zero_balance"),
            ("radius", "account_not_found"),
        }

        # The four calls left live, as the state sampler last saw them (each half second).
        async def hot_is_four() -> bool:
            hot = await prometheus.query("topk(10, max by (account) (ocs_hot_account_live_calls))")
            return [(r["metric"]["account"], r["value"][1]) for r in hot] == [("rich", "4")]

        await eventually(hot_is_four, within=15, what="rich's four live calls in Prometheus")
        zones = await prometheus.query("topk(10, max by (zone) (ocs_hot_zone_live_calls))")
        assert [(r["metric"]["zone"], r["value"][1]) for r in zones] == [("Germany", "4")]
        runs = await prometheus.query('max by (state) (ocs_billing_runs{state="done"})')
        assert runs[0]["value"][1] == "1"

        # Prometheus loaded the rules itself and evaluates every one without error.
        async def evaluated() -> bool:
            groups = (await prometheus.api("rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return len(rules) == len(alert_expressions()) and all(
                rule["health"] == "ok" for rule in rules
            )

        await eventually(evaluated, within=15, what="the alert rules to be evaluated")
    finally:
        stopping.set()
        await sampler


def test_the_selectors_an_alert_reads_are_found() -> None:
    # The helper above, on an expression of known shape.
    expr = (
        'sum by (reason) (rate(ocs_decisions_total{result="refused"}[5m] offset 1h))'
        ' / clamp_min(sum(ocs_x_total), 1) and up{job=~"ocs.*"} == 0'
    )
    assert selectors(expr) == {
        'ocs_decisions_total{result="refused"}',
        "ocs_x_total",
        'up{job=~"ocs.*"}',
    }
