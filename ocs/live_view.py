"""What ``ocs calls`` and ``ocs top`` show: live calls read from Redis, decision rates read
from a server's ``/metrics``, each made into a rich table for a person at a terminal.

Live calls come from Redis as the server keeps them: the expiry sets of all 1024
buckets name every live call (``BalanceStore.all_live_calls``, pipelined, never
KEYS or SCAN), or one account's live-calls hash (``--account``). Their grant is
computed as the server computes it (``CallService.granted_seconds``), from the
catalog loaded when the view started.

Decisions come from the Prometheus text a running server exports, so ``ocs top``
shows what every worker of that server decided, whichever front end (HTTP or
RADIUS) took the request. Counters only grow: a rate is the growth between two
readings over the seconds between them, and a counter found smaller than before
(the server restarted) counts from zero.
"""

import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ocs.charging.values import CallRecord
from ocs.money import format_amount
from ocs.services import Services

GRANTED = "granted"
REFUSED = "refused"

# The series ocs exports its decisions in (ocs/metrics.py), without the ``_total``
# suffix: the parser names a counter's family so.
DECISIONS = "ocs_decisions"  # {protocol, result="granted" or "refused", reason}
# The series of servers from before ocs_decisions_total, read when it is absent.
HTTP_DECISIONS = "ocs_call_authorizations"  # {result="granted" or the reason code}
RADIUS_PACKETS = "ocs_radius_packets"  # {type="access", result="accept" or "reject"}
RADIUS_REJECTS = "ocs_radius_rejects"  # {return_code, reason}


@dataclass(frozen=True, slots=True)
class LiveCall:
    """One live call as ``ocs calls`` shows it; money in micro-units."""

    account: str
    call_id: str
    member: str | None
    destination: str
    zone: str
    authorized_at: float  # epoch seconds
    started_at: int  # epoch seconds; 0 while the switch has not reported the answer
    granted: int  # seconds the call may run
    reserved: int  # funds it holds now
    currency: str


async def read_live_calls(services: Services, account: str | None = None) -> list[LiveCall]:
    """Every live call (or ``account``'s), oldest authorization first."""
    store, calls = services.store, services.calls
    if account is None:
        found = await store.all_live_calls()
    else:
        found = [(account, c, e) for c, e in (await store.live_calls_of(account)).items()]
    rows = []
    for account_id, call_id, entry in found:
        record = CallRecord.unpack(entry.record)
        rows.append(
            LiveCall(
                account=account_id,
                call_id=call_id,
                member=record.member,
                destination=record.destination,
                zone=record.zone,
                authorized_at=record.authorized_at_ms / 1000,
                started_at=entry.answered_at,
                granted=calls.granted_seconds(record, entry),
                reserved=entry.held,
                currency=record.currency,
            )
        )
    return sorted(rows, key=lambda row: (row.authorized_at, row.account, row.call_id))


def duration_text(seconds: float) -> str:
    """Seconds as a person reads a call's length: ``m:ss``, or ``h:mm:ss`` from an hour."""
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def money_text(micro: int, currency: str) -> str:
    """An amount with at least two decimals and no trailing zeros past them: ``1.50 EUR``."""
    whole, _, fraction = format_amount(micro).partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')} {currency}"


def plain(*values: str) -> list[Text]:
    """Cells shown exactly as written: rich reads a ``str`` cell as markup, so a value
    holding brackets would be changed (``a[b]c`` shown ``ac``) or refused (MarkupError)."""
    return [Text(value) for value in values]


CALL_COLUMNS = (
    "account",
    "call",
    "member",
    "destination",
    "zone",
    "elapsed",
    "granted",
    "reserved",
)


def calls_table(
    calls: Sequence[LiveCall], now: float, account: str | None = None, limit: int | None = None
) -> Table:
    """The live calls as a table, the first ``limit`` of them when given (a screen's
    worth), with the count and the funds all of them hold in its caption."""
    scope = f" of account {account}" if account else ""
    # Every value is shown as plain text, never read as rich markup: a call id, an
    # account or a zone may hold brackets ("abc[/x]def"), shown as they are.
    table = Table(
        title=Text(
            f"ocs: {len(calls)} live call{'' if len(calls) == 1 else 's'}{scope}"
            f" at {time.strftime('%H:%M:%S', time.localtime(now))}"
        ),
        box=box.SIMPLE_HEAD,
    )
    for name in CALL_COLUMNS:
        right = name in ("elapsed", "granted", "reserved")
        # A call id is folded, never cut short: the operator copies it to cut the call
        # (a qualified RADIUS id is long, decision 0048).
        if name == "call":
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="right" if right else "left", no_wrap=True)
    held: Counter[str] = Counter()
    for call in calls:
        held[call.currency] += call.reserved
    for call in calls[:limit]:
        table.add_row(
            *plain(
                call.account,
                call.call_id,
                call.member or "",
                call.destination,
                call.zone,
                duration_text(now - call.started_at) if call.started_at else "ringing",
                duration_text(call.granted),
                money_text(call.reserved, call.currency),
            )
        )
    notes = []
    if limit is not None and len(calls) > limit:
        notes.append(f"the {limit} oldest shown")
    if held:
        notes.append(
            "reserved: "
            + ", ".join(money_text(amount, currency) for currency, amount in sorted(held.items()))
        )
    table.caption = Text("; ".join(notes)) if notes else None
    return table


# --- decisions (ocs top) ---------------------------------------------------------------

DecisionKey = tuple[str, str, str]
"""(protocol, ``granted`` or ``refused``, reason; empty for a grant)."""


@dataclass(frozen=True, slots=True)
class DecisionReading:
    """The decision counters of one scrape, and when it was taken (monotonic seconds)."""

    at: float
    counts: Mapping[DecisionKey, float]


def _totals(families: Sequence[Metric], name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each ``<name>_total`` sample of counter family ``name``."""
    return [
        (sample.labels, sample.value)
        for family in families
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_total"
    ]


def parse_decisions(text: str) -> dict[DecisionKey, float]:
    """Decisions so far by protocol, outcome and reason, from a server's Prometheus text.

    ``ocs_decisions_total{protocol, result, reason}`` where the server exports it. A
    server from before it counts HTTP decisions in ``ocs_call_authorizations_total
    {result}`` (``granted`` or the reason code) and RADIUS ones as the Access-Requests
    of ``ocs_radius_packets_total``, the rejects split by ``ocs_radius_rejects_total
    {reason}``: those are read instead, so ``ocs top`` watches both through an upgrade.
    """
    families = list(text_string_to_metric_families(text))
    counts: defaultdict[DecisionKey, float] = defaultdict(float)
    decided = _totals(families, DECISIONS)
    for labels, value in decided:
        result = labels.get("result", "")
        reason = "" if result == GRANTED else labels.get("reason", "")
        counts[(labels.get("protocol", ""), result, reason)] += value
    if decided:
        return dict(counts)
    for labels, value in _totals(families, HTTP_DECISIONS):
        result = labels.get("result", "")
        if result == GRANTED:
            counts[("http", GRANTED, "")] += value
        else:
            counts[("http", REFUSED, result)] += value
    for labels, value in _totals(families, RADIUS_PACKETS):
        if labels.get("type") == "access" and labels.get("result") == "accept":
            counts[("radius", GRANTED, "")] += value
    for labels, value in _totals(families, RADIUS_REJECTS):
        counts[("radius", REFUSED, labels.get("reason", ""))] += value
    return dict(counts)


def metrics_url(host: str, port: int) -> str:
    """The ``/metrics`` URL of a server listening on ``host``:``port`` (a wildcard host:
    this machine's loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


# No proxy between an operator and the server's metrics (http_proxy is for the web).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def read_decisions(url: str, timeout: float = 5.0) -> DecisionReading:
    """One reading of a server's decision counters; OSError when it cannot be had."""
    with _OPENER.open(url, timeout=timeout) as reply:
        text = reply.read().decode("utf-8", errors="replace")
    return DecisionReading(at=time.monotonic(), counts=parse_decisions(text))


def growth(before: float | None, now: float) -> float:
    """How much a counter grew; a smaller one was reset (a restart) and grew from zero."""
    if before is None:
        return 0.0
    return now - before if now >= before else now


def rates(
    previous: DecisionReading | None, current: DecisionReading
) -> dict[DecisionKey, float] | None:
    """Decisions per second between two readings; None before there are two."""
    if previous is None or current.at <= previous.at:
        return None
    seconds = current.at - previous.at
    return {
        key: growth(previous.counts.get(key, 0.0), value) / seconds
        for key, value in current.counts.items()
    }


def _rate_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def top_view(
    url: str,
    previous: DecisionReading | None,
    current: DecisionReading | None,
    error: str | None = None,
) -> Group:
    """What ``ocs top`` shows: decisions per second by protocol, then refusals by reason."""
    if current is None:
        return Group(Text(f"ocs top: {url}: {error or 'waiting for the first reading'}"))
    per_second = rates(previous, current)
    status = f"ocs top: {url}" + (f" (last reading failed: {error})" if error else "")
    summary = Table(title="decisions", box=box.SIMPLE_HEAD)
    for name in ("protocol", "granted/s", "refused/s", "refused %", "granted", "refused"):
        summary.add_column(name, justify="left" if name == "protocol" else "right")
    protocols = sorted({key[0] for key in current.counts})
    for protocol in [*protocols, "all"]:
        keys = [k for k in current.counts if protocol in ("all", k[0])]
        totals = {
            outcome: sum(current.counts[k] for k in keys if k[1] == outcome)
            for outcome in (GRANTED, REFUSED)
        }
        rate = (
            None
            if per_second is None
            else {
                outcome: sum(per_second[k] for k in keys if k[1] == outcome)
                for outcome in (GRANTED, REFUSED)
            }
        )
        decided = rate[GRANTED] + rate[REFUSED] if rate else 0.0
        summary.add_row(
            Text(protocol),
            _rate_text(rate[GRANTED] if rate else None),
            _rate_text(rate[REFUSED] if rate else None),
            f"{100 * rate[REFUSED] / decided:.1f}" if rate and decided else "-",
            f"{totals[GRANTED]:.0f}",
            f"{totals[REFUSED]:.0f}",
        )
    refusals = Table(title="refusals by reason", box=box.SIMPLE_HEAD)
    for name in ("reason", "protocol", "per second", "total"):
        refusals.add_column(name, justify="right" if name in ("per second", "total") else "left")
    refused = [k for k in current.counts if k[1] == REFUSED and current.counts[k] > 0]
    refused.sort(key=lambda k: (-(per_second or {}).get(k, 0.0), -current.counts[k], k))
    for key in refused:
        refusals.add_row(
            Text(key[2] or "(none)"),
            Text(key[0]),
            _rate_text(None if per_second is None else per_second[key]),
            f"{current.counts[key]:.0f}",
        )
    return Group(Text(status), summary, refusals)
