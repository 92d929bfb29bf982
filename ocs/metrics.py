"""Prometheus metrics of an ocs process; every name starts with ``ocs_``.

Metrics are defined once here, at import, on the default registry, and the
HTTP adapter exposes them at ``/metrics`` (docs/operations.md lists each one).
Labels are bounded sets (front ends, request kinds, route names, reason codes,
causes, states), never account or call ids: the only series naming accounts
are the ten hottest (``ocs_hot_account_live_calls``), which ocs itself bounds.

Two kinds of series:

- *events* (counters, histograms, a few gauges) updated where things happen.
  Under ``ocs serve --workers N`` each worker writes them to files in
  ``PROMETHEUS_MULTIPROC_DIR`` and the scrape adds up every worker's counters;
  each gauge says how its workers' values combine (``multiprocess_mode``).
- *state* (live calls, reserved funds, ledger lag, catalog, billing runs):
  sampled from Redis, PostgreSQL and the process's catalog by
  ``ocs.state_metrics`` every few seconds and published here as plain
  numbers (``STATE``). Redis and PostgreSQL hold one truth for every worker,
  so whichever worker answers a scrape reports its latest sample; nothing is
  summed across workers (which would count every live call N times).

The hot path pays a dictionary lookup and an increment: ``decision`` and
``request_latency`` hand out label children made once per label values.
"""

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from ocs import metric_files

# Set by `ocs serve --workers N` for its workers: each writes its samples to files
# there, and whichever worker a scrape reaches answers for all of them.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# No ``*_created`` series: one more line per label set, which Prometheus's text format
# stores as a gauge of its own and no dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The latency budget (docs/shared DESIGN: p99 <= 5 ms for an Access-Request): buckets
# close together up to it, so that "answered within 5 ms" is one bucket exactly and
# p50..p99 are read with a millisecond's precision; a few wide ones above it.
LATENCY_BUDGET_S = 0.005
REQUEST_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.1, 1.0)
# A backend round trip: a batch of the auto-pipeline, a ledger transaction, a probe.
ROUNDTRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)

_M = TypeVar("_M", bound=MetricWrapperBase)


class Children(Generic[_M]):
    """A metric's label children, each made once: ``labels()`` validates and locks on
    every call, a dictionary lookup does not."""

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._made: dict[tuple[str, ...], _M] = {}

    def get(self, *values: str) -> _M:
        """The child of these label values."""
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._metric.labels(*values)
        return child


def exposition() -> bytes:
    """The Prometheus text of this process, or of every worker when there are several."""
    directory = os.environ.get(MULTIPROCESS_DIR_ENV)
    if directory:
        registry = CollectorRegistry()
        registry.register(WorkerFiles(directory))
        registry.register(STATE)
        # The parent folds a dead worker's files together meanwhile (ocs.metric_files).
        with metric_files.reading(Path(os.environ[MULTIPROCESS_DIR_ENV])):
            return generate_latest(registry)
    return generate_latest(REGISTRY)


# The value that marks, in a worker's metric file, the ``ocs_redis_master_up`` series of a
# master gone from the cluster: such a file keeps every series it ever held
# (prometheus_client removes none there), and a scrape leaves the marked ones out.
DEPARTED = -1.0


class WorkerFiles(Collector):
    """Every worker's samples, read from the metrics directory (prometheus_client's
    multiprocess collector), less the series of departed Redis masters (``DEPARTED``).

    ``ocs_redis_master_up`` keeps the lowest of the workers' values: one worker that saw
    the master leave hides it, until a probe of that worker meets it again."""

    def __init__(self, directory: str) -> None:
        # Not registered here: the caller's registry registers this collector.
        self._files = multiprocess.MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        """Each family of every worker's files, departed masters' series left out."""
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name == REDIS_MASTER_UP_NAME:
                family.samples = [s for s in family.samples if s.value != DEPARTED]
            yield family


# --- decisions and requests -------------------------------------------------------------

DECISIONS = Counter(
    "ocs_decisions_total",
    "Call authorizations decided, by protocol (http, radius), result (granted, refused) and"
    " the refusal's reason code (empty when granted).",
    ["protocol", "result", "reason"],
)
_DECISIONS = Children(DECISIONS)


def decision(protocol: str, reason: str | None) -> None:
    """Count one authorization: granted when ``reason`` is None, else refused for it."""
    if reason is None:
        _DECISIONS.get(protocol, "granted", "").inc()
    else:
        _DECISIONS.get(protocol, "refused", reason).inc()


REQUEST_LATENCY = Histogram(
    "ocs_request_duration_seconds",
    "Time to answer a request, by front end (http, radius) and kind (authorize, start,"
    " update, stop, cut, usage, query, nas, admin, other).",
    ["frontend", "kind"],
    buckets=REQUEST_BUCKETS,
)
_REQUEST_LATENCY = Children(REQUEST_LATENCY)


def request_latency(frontend: str, kind: str) -> Histogram:
    """The latency histogram child of one front end and request kind."""
    return _REQUEST_LATENCY.get(frontend, kind)


HTTP_REQUESTS = Counter(
    "ocs_http_requests_total",
    "HTTP API requests by endpoint and result (ok or the rejection reason code).",
    ["endpoint", "method", "result"],
)
HTTP_REQUEST_CHILDREN = Children(HTTP_REQUESTS)
# Count and sum only (a mean per endpoint); the distribution is ocs_request_duration_seconds
# by kind, whose buckets do not multiply by every admin endpoint.
HTTP_LATENCY = Summary(
    "ocs_http_request_duration_seconds",
    "HTTP API request time by endpoint: count and sum (the mean); the distribution is"
    " ocs_request_duration_seconds.",
    ["endpoint", "method"],
)
HTTP_LATENCY_CHILDREN = Children(HTTP_LATENCY)
CALL_DECISIONS = Counter(
    "ocs_call_authorizations_total",
    "HTTP call authorizations by result (granted or the rejection reason code); every"
    " protocol's are ocs_decisions_total.",
    ["result"],
)
CALL_STOPS = Counter(
    "ocs_call_stops_total",
    "HTTP call stops by result (charged, repeated, or the rejection reason code).",
    ["result"],
)
LATE_STOPS = Counter(
    "ocs_late_stops_total",
    "Stops that came after their call was closed without one (by the janitor or a NAS"
    " restart), by outcome: charged (the stop added to what the close charged), refunded"
    " (the call was shorter than the close charged: the difference given back) or covered"
    " (the close had charged as much). Many say call_expiry_grace is too short.",
    ["outcome"],
)
LATE_STOPS.labels("charged")
LATE_STOPS.labels("refunded")
LATE_STOPS.labels("covered")

# --- live calls and the janitor ---------------------------------------------------------

STALE_CALLS_CLOSED = Counter(
    "ocs_stale_calls_closed_total",
    "Live calls closed because no stop came, by cause: expired (a started call whose stop"
    " was lost), start-timeout (never answered), nas-reboot (its NAS restarted),"
    " unconfirmed (granted over HTTP, but its authorization was answered with an error:"
    " released free at once).",
    ["cause"],
)
for _cause in ("expired", "start-timeout", "nas-reboot", "unconfirmed"):
    STALE_CALLS_CLOSED.labels(_cause)

# --- the ledger -------------------------------------------------------------------------

LEDGER_WRITTEN = Counter(
    "ocs_ledger_entries_written_total",
    "Ledger stream entries committed to PostgreSQL by this process.",
)
LEDGER_DEAD_LETTERS = Counter(
    "ocs_ledger_dead_letters_total",
    "Ledger entries PostgreSQL refused, set aside in a dead-letter stream (alert on any).",
)

# --- the catalog ------------------------------------------------------------------------

CATALOG_RELOAD_FAILURES = Counter(
    "ocs_catalog_reload_failures_total",
    "Catalog reloads that failed (the previous snapshot keeps serving).",
)

# Each LISTEN connection PostgreSQL dropped and ocs replaced (ocs.db.listener); the
# changes notified meanwhile are picked up by the full reload that follows.
PG_LISTENER_RECONNECTS = Counter(
    "ocs_pg_listener_reconnects_total",
    "PostgreSQL LISTEN connections lost and replaced (a full reload follows), by listener.",
    ["listener"],
)
for _listener in ("catalog", "nas_clients"):
    PG_LISTENER_RECONNECTS.labels(_listener)

# --- RADIUS -----------------------------------------------------------------------------

RADIUS_PACKETS = Counter(
    "ocs_radius_packets_total",
    "RADIUS requests answered, by packet type and result (accept, reject, ok, error).",
    ["type", "result"],
)
RADIUS_PACKET_CHILDREN = Children(RADIUS_PACKETS)
RADIUS_REJECTS = Counter(
    "ocs_radius_rejects_total",
    "Access-Rejects by h323-return-code and reason.",
    ["return_code", "reason"],
)
RADIUS_DROPS = Counter(
    "ocs_radius_dropped_total",
    "RADIUS packets dropped without an answer, by reason.",
    ["reason"],
)
for _drop in (
    "malformed",
    "unknown_client",
    "unexpected_code",
    "bad_authenticator",
    "bad_message_authenticator",
    "missing_message_authenticator",
    "backend_unavailable",
    "internal_error",
    # Shed before any work (ocs.radius.server): too many in flight, waited too long, or
    # the reply could not be sent.
    "overload",
    "late",
    "send_failed",
):
    RADIUS_DROPS.labels(_drop)
# The kernel's count of datagrams it dropped on a socket (receive buffer full) since the
# socket was bound, as the latest datagram read reports it (SO_RXQ_OVFL). A gauge: every
# worker reads the same inherited socket, so the largest value seen is the socket's count.
RADIUS_SOCKET_DROPS = Gauge(
    "ocs_radius_socket_drops",
    "Datagrams the kernel dropped on a RADIUS socket before ocs read them (receive"
    " buffer full), since the socket was bound; by port (auth, acct).",
    ["port"],
    multiprocess_mode="max",
)
# How many of the hot modules (ocs.compiled.HOT_MODULES) the process runs compiled with
# mypyc (decision 0038): 0 for a pure-Python build. The least over the workers: one
# started from another build shows.
COMPILED_MODULES = Gauge(
    "ocs_compiled_modules",
    "Hot modules of the request path this process runs compiled with mypyc; 0: pure Python.",
    multiprocess_mode="min",
)
# Event-loop lag (ocs.loop_lag) buckets: the RADIUS latency budget (5 ms) is one bucket
# edge; a few wide ones above.
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOOP_LAG = Histogram(
    "ocs_event_loop_lag_seconds",
    "How late the event loop ran a periodic timer: time it spent on other work first.",
    buckets=LOOP_LAG_BUCKETS,
)
LOOP_LAG_MAX = Gauge(
    "ocs_event_loop_lag_max_seconds",
    "The longest event-loop stall seen since start-up (or since LoopLag.take_max).",
    multiprocess_mode="max",
)
RADIUS_DUPLICATES = Counter(
    "ocs_radius_duplicates_total",
    "Retransmitted RADIUS requests answered from the reply cache (RFC 5080).",
    ["type"],
)
RADIUS_LATENCY = Summary(
    "ocs_radius_request_duration_seconds",
    "Time from a RADIUS request's arrival to its answer, by packet type: count and sum;"
    " the distribution is ocs_request_duration_seconds.",
    ["type"],
)
RADIUS_LATENCY_CHILDREN = Children(RADIUS_LATENCY)
PIN_FAILURES = Counter(
    "ocs_pin_failures_total",
    "Wrong or unknown PINs presented, by channel (radius, http).",
    ["channel"],
)
PIN_GUESSES_BLOCKED = Counter(
    "ocs_pin_guesses_blocked_total",
    "PIN attempts refused (return code 10) because their caller id or NAS guessed too often.",
    ["scope"],
)
DISCONNECTS = Counter(
    "ocs_disconnect_requests_total",
    "Disconnect-Requests (RFC 5176) sent to cut a call, by outcome (ack, nak, timeout,"
    " unreachable, bad-reply).",
    ["outcome"],
)
for _outcome in ("ack", "nak", "timeout", "unreachable", "bad-reply"):
    DISCONNECTS.labels(_outcome)

# --- backends ---------------------------------------------------------------------------

BACKEND_UP = Gauge(
    "ocs_backend_up",
    "1 while this process reaches the backend (redis, postgresql), 0 while it does not.",
    ["backend"],
    # The lowest of the running workers: a dead worker's last value is not kept.
    multiprocess_mode="livemin",
)
REDIS_MASTER_UP_NAME = "ocs_redis_master_up"
REDIS_MASTER_UP = Gauge(
    REDIS_MASTER_UP_NAME,
    "1 while this process's write probe is taken by the Redis master (host:port), 0 while"
    " it refuses writes or does not answer: which masters of a cluster fail.",
    ["master"],
    # The lowest of the running workers, as ocs_backend_up.
    multiprocess_mode="livemin",
)


def drop_master(master: str) -> None:
    """Forget ``ocs_redis_master_up`` of a master gone from the cluster (a failover, a
    scale-in): its series leaves this process's /metrics. Under ``--workers`` the series
    stays in this worker's metric file, marked ``DEPARTED`` for the scrape to leave out;
    before, it stayed there at 1 until the worker restarted."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        REDIS_MASTER_UP.labels(master).set(DEPARTED)
        return
    REDIS_MASTER_UP.remove(master)


BACKEND_OUTAGES = Counter(
    "ocs_backend_outages_total",
    "Times this process lost its backend (redis, postgresql).",
    ["backend"],
)
REQUEST_ERRORS = Counter(
    "ocs_request_errors_total",
    "Requests not served for an error no backend outage explains, each one, by protocol"
    " (radius, http) and reason (ocs's reason code, or the error's class); the log holds"
    " one line per reason every few seconds (ocs.log_limit).",
    ["protocol", "reason"],
)
BACKEND_ROUNDTRIP = Histogram(
    "ocs_backend_roundtrip_seconds",
    "Round trips to a backend (redis, postgresql) by source: pipeline (a batch of the"
    " hot path's Redis commands), ledger (a ledger writer transaction), probe (a Redis"
    " SET of a probe key, a PostgreSQL SELECT 1, every few seconds).",
    ["backend", "source"],
    buckets=ROUNDTRIP_BUCKETS,
)
BACKEND_ERRORS = Counter(
    "ocs_backend_errors_total",
    "Failed round trips to a backend, by backend and source (as ocs_backend_roundtrip_seconds).",
    ["backend", "source"],
)
for _backend, _source in (
    ("redis", "pipeline"),
    ("redis", "probe"),
    ("redis", "ledger"),
    ("postgresql", "ledger"),
    ("postgresql", "probe"),
):
    BACKEND_ERRORS.labels(_backend, _source)
REDIS_PIPELINE_ROUNDTRIP = BACKEND_ROUNDTRIP.labels("redis", "pipeline")
REDIS_PIPELINE_ERRORS = BACKEND_ERRORS.labels("redis", "pipeline")

# --- billing (issue 12): runs, drafts, postings. Labelled by bounded sets only (run state,
# stage, outcome); never by run, account or invoice id. ------------------------------------

BILLING_RUNS_STARTED = Counter(
    "ocs_billing_runs_started_total",
    "Invoice runs created, by who created them (worker: a due cycle; operator: CLI or API).",
    ["source"],
)
BILLING_RUNS_FINISHED = Counter(
    "ocs_billing_runs_finished_total",
    "Invoice runs this process saw finish (every chunk done).",
)
BILLING_ACCOUNTS_DRAFTED = Counter(
    "ocs_billing_accounts_drafted_total",
    "Accounts whose draft invoice this process wrote (or recomputed) in a run's chunks.",
)
BILLING_RUN_ACCOUNTS = Gauge(
    "ocs_billing_run_accounts",
    "Accounts of the runs this process last looked at, by run state and progress"
    " (done, total): the progress of a long run.",
    ["state", "progress"],
    multiprocess_mode="max",
)
BILLING_POSTED = Counter(
    "ocs_billing_invoices_posted_total",
    "Invoices posted (numbered) and invoice lines whose money moved, by what (invoices, lines).",
    ["what"],
)
BILLING_VOIDED = Counter(
    "ocs_billing_invoices_voided_total",
    "Posted invoices voided with a credit note.",
)
BILLING_FAILURES = Counter(
    "ocs_billing_failures_total",
    "Billing worker steps that failed and will be retried, by stage (commitments, counters,"
    " schedule, chunk, post, payments, dunning, sessions).",
    ["stage"],
)
for _stage in (
    "commitments",
    "counters",
    "schedule",
    "chunk",
    "post",
    "payments",
    "dunning",
    "sessions",
):
    BILLING_FAILURES.labels(_stage)
BILLING_SESSIONS_GIVEN_UP = Gauge(
    "ocs_billing_sessions_given_up",
    "Closed on-demand sessions with no invoice whose draft the billing worker stopped"
    " trying (a refusal, or 3 failures in a row): each needs an operator.",
    multiprocess_mode="max",
)
BILLING_CHUNK_DURATION = Histogram(
    "ocs_billing_chunk_duration_seconds",
    "Time to draft one chunk of an invoice run's accounts.",
    buckets=(0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0),
)
COUNTER_CYCLES_OPENED = Counter(
    "ocs_counter_cycles_opened_total",
    "Plans' counter cycles the billing worker opened at their periods' starts (each a reset"
    " of the plan's counters, its recurring fees charged).",
)
COUNTER_CYCLES_MISSED = Counter(
    "ocs_counter_cycles_missed_total",
    "Plans' counter cycles whose periods began and ended while the billing worker was away:"
    " their recurring fees charged when it was back, their seconds not given.",
)
BILLING_WORKER_PASS = Gauge(
    "ocs_billing_worker_last_pass_timestamp_seconds",
    "When the billing worker last finished a pass (Unix time): its heartbeat.",
    multiprocess_mode="max",
)

# --- payments, dunning, events, usage imports ---------------------------------------------

PAYMENTS = Counter(
    "ocs_payments_total",
    "Payments by source (manual, bank, stripe) and result: recorded, repeated (the same"
    " external id again), unmatched (a bank file's entry not applied: it names no"
    " account, or cannot be read or stored).",
    ["source", "result"],
)
for _source in ("manual", "bank", "stripe"):
    PAYMENTS.labels(_source, "recorded")
    PAYMENTS.labels(_source, "repeated")
PAYMENTS.labels("bank", "unmatched")
PAYMENT_REFUNDS = Counter(
    "ocs_payment_refunds_total",
    "Refunds debited, by source (manual, stripe).",
    ["source"],
)
DUNNING_STEPS = Counter(
    "ocs_dunning_steps_total",
    "Dunning steps taken, by step (notice, suspension, reactivation) and outcome (sent,"
    " suspended, already_suspended, reactivated).",
    ["step", "outcome"],
)
for _step, _outcome in (
    ("notice", "sent"),
    ("suspension", "suspended"),
    ("suspension", "already_suspended"),
    ("reactivation", "reactivated"),
):
    DUNNING_STEPS.labels(_step, _outcome)
DUNNING_BACKLOG = Gauge(
    "ocs_dunning_backlog",
    "Dunning steps due that the latest dunning run has not taken (yet, or because it"
    " failed): 0 after every run that finished.",
    multiprocess_mode="mostrecent",
)
DUNNING_LAST_RUN = Gauge(
    "ocs_dunning_last_run_timestamp_seconds",
    "When a dunning run last finished (Unix time).",
    multiprocess_mode="max",
)
EVENT_DELIVERIES = Counter(
    "ocs_event_deliveries_total",
    "Event delivery attempts by channel (webhook, email) and outcome: delivered, retrying"
    " (failed, tried again later), dead (failed for the last time), skipped.",
    ["channel", "outcome"],
)
for _channel in ("webhook", "email"):
    for _outcome in ("delivered", "retrying", "dead", "skipped"):
        EVENT_DELIVERIES.labels(_channel, _outcome)
USAGE_IMPORTS = Counter(
    "ocs_usage_imports_total",
    "Usage (mediation) imports finished, by state (done, refused, failed).",
    ["state"],
)
USAGE_IMPORT_ROWS = Counter(
    "ocs_usage_import_rows_total",
    "Rows of finished usage imports by outcome (charged, repeated, filtered, rejected).",
    ["outcome"],
)
for _state in ("done", "refused", "failed"):
    USAGE_IMPORTS.labels(_state)
for _outcome in ("charged", "repeated", "filtered", "rejected"):
    USAGE_IMPORT_ROWS.labels(_outcome)


def usage_import_finished(state: str, rows: Mapping[str, int]) -> None:
    """Count one finished usage import and its rows by outcome (charged, repeated, ...)."""
    USAGE_IMPORTS.labels(state).inc()
    for outcome, count in rows.items():
        if count:
            USAGE_IMPORT_ROWS.labels(outcome).inc(count)


# --- sampled state ------------------------------------------------------------------------

# How many accounts and zones ocs_hot_* name: the series naming accounts stay bounded.
HOT_TOP = 10


@dataclass(frozen=True, slots=True)
class LiveState:
    """What Redis holds now: live calls, their funds and lines, the ledger's lag."""

    at: float  # when it was sampled (Unix time)
    took: float  # seconds the sample took
    calls: Mapping[str, int]  # live calls by state: started, not_started
    reserved: Mapping[str, int]  # currency -> micro-units held by live calls
    accounts_with_calls: int
    accounts_at_line_limit: int  # their lines in use reached max_lines
    hot_accounts: Sequence[tuple[str, int]]  # (account, live calls), busiest first
    hot_zones: Sequence[tuple[str, int]]  # (zone, live calls), busiest first
    ledger_pending: int  # ledger entries not yet in PostgreSQL
    ledger_oldest_age: float  # seconds the oldest of them has waited (0: none)
    dead_letters: int  # ledger entries PostgreSQL refused, waiting for an operator


@dataclass(frozen=True, slots=True)
class CatalogState:
    """The catalog snapshot this process serves."""

    version: int  # snapshots this process has loaded
    loaded_at: float  # when it first served this version (Unix time)
    sizes: Mapping[str, int]  # plans, prefixes, carriers


@dataclass(frozen=True, slots=True)
class BillingState:
    """Billing as PostgreSQL holds it: runs, the latest run's invoices, event deliveries."""

    at: float
    runs: Mapping[str, int]  # runs by state: running, done
    oldest_running_age: float  # seconds since the oldest running run was created (0: none)
    unposted_runs: int  # drafted runs marked auto_post whose drafts are not all posted
    oldest_unposted_age: float  # seconds since the oldest of them was drafted (0: none)
    last_finished_at: float | None  # when the latest finished run finished (Unix time)
    last_duration: float | None  # how long that run took, creation to finish
    latest_accounts: Mapping[str, int]  # the newest run's accounts: done, total
    latest_invoices: Mapping[str, int]  # the newest run's invoices by state
    deliveries: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (channel, state)


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class StateCollector(Collector):
    """Renders the latest sampled state at each scrape (nothing until the first sample)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live: LiveState | None = None
        self.catalog: CatalogState | None = None
        self.billing: BillingState | None = None

    def publish(
        self,
        live: LiveState | None = None,
        catalog: CatalogState | None = None,
        billing: BillingState | None = None,
    ) -> None:
        """Replace the parts given; the others stay as they were."""
        with self._lock:
            if live is not None:
                self.live = live
            if catalog is not None:
                self.catalog = catalog
            if billing is not None:
                self.billing = billing

    def forget(self, *parts: str) -> None:
        """Stop exporting these parts ("live", "catalog", "billing"; none named: all), as
        when their sampler stopped or a read failed."""
        with self._lock:
            for part in parts or ("live", "catalog", "billing"):
                setattr(self, part, None)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """Every family this collector can export (for the registry's name checks)."""
        return [
            *_live_families(None),
            *_catalog_families(None),
            *_billing_families(None),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The families of the parts sampled so far."""
        with self._lock:
            live, catalog, billing = self.live, self.catalog, self.billing
        found: list[GaugeMetricFamily] = []
        if live is not None:
            found += _live_families(live)
        if catalog is not None:
            found += _catalog_families(catalog)
        if billing is not None:
            found += _billing_families(billing)
        return found


def _live_families(state: LiveState | None) -> Iterator[GaugeMetricFamily]:
    sampled = _gauge(
        "ocs_state_sampled_timestamp_seconds",
        "When the live state below was last read from Redis (Unix time).",
    )
    took = _gauge(
        "ocs_state_sample_duration_seconds", "Seconds the last read of the live state took."
    )
    calls = _gauge(
        "ocs_live_calls",
        "Live calls by state: started, or not_started (granted, its answer still to be"
        " reported: a RADIUS Accounting-Start, an HTTP /start).",
        ["state"],
    )
    lines = _gauge(
        "ocs_lines_in_use",
        "Lines in use over every account (each live call holds one line).",
    )
    reserved = _gauge(
        "ocs_reserved_funds_micros",
        "Funds held by live calls, in micro-units (1e-6) of each currency.",
        ["currency"],
    )
    accounts = _gauge("ocs_accounts_with_live_calls", "Accounts with at least one live call.")
    at_limit = _gauge(
        "ocs_accounts_at_line_limit",
        "Accounts whose lines in use reached their max_lines: their next call is refused"
        " no_free_line.",
    )
    hot_accounts = _gauge(
        "ocs_hot_account_live_calls",
        f"Live calls of the {HOT_TOP} accounts with the most (the only series naming accounts).",
        ["account"],
    )
    hot_zones = _gauge(
        "ocs_hot_zone_live_calls",
        f"Live calls to the {HOT_TOP} zones with the most.",
        ["zone"],
    )
    pending = _gauge(
        "ocs_ledger_pending_entries",
        "Ledger entries in Redis not yet committed to PostgreSQL (the ledger writer's lag).",
    )
    oldest = _gauge(
        "ocs_ledger_oldest_pending_age_seconds",
        "How long the oldest ledger entry not yet in PostgreSQL has waited (0: none waits).",
    )
    dead = _gauge(
        "ocs_ledger_dead_letter_entries",
        "Ledger entries PostgreSQL refused, kept in the dead-letter streams for an operator.",
    )
    if state is not None:
        sampled.add_metric([], state.at)
        took.add_metric([], state.took)
        for name in ("started", "not_started"):
            calls.add_metric([name], state.calls.get(name, 0))
        lines.add_metric([], sum(state.calls.values()))
        for currency, amount in sorted(state.reserved.items()):
            reserved.add_metric([currency], amount)
        accounts.add_metric([], state.accounts_with_calls)
        at_limit.add_metric([], state.accounts_at_line_limit)
        for account, count in state.hot_accounts:
            hot_accounts.add_metric([account], count)
        for zone, count in state.hot_zones:
            hot_zones.add_metric([zone], count)
        pending.add_metric([], state.ledger_pending)
        oldest.add_metric([], state.ledger_oldest_age)
        dead.add_metric([], state.dead_letters)
    yield from (sampled, took, calls, lines, reserved, accounts, at_limit)
    yield from (hot_accounts, hot_zones, pending, oldest, dead)


def _catalog_families(state: CatalogState | None) -> Iterator[GaugeMetricFamily]:
    version = _gauge(
        "ocs_catalog_version",
        "Catalog snapshots this process has loaded since it started (each change is one).",
    )
    loaded = _gauge(
        "ocs_catalog_loaded_timestamp_seconds",
        "When the catalog snapshot this process serves was loaded (Unix time).",
    )
    size = _gauge(
        "ocs_catalog_size",
        "The catalog this process serves: plans, prefixes (of every plan's deck), carriers.",
        ["what"],
    )
    if state is not None:
        version.add_metric([], state.version)
        loaded.add_metric([], state.loaded_at)
        for what, count in sorted(state.sizes.items()):
            size.add_metric([what], count)
    yield from (version, loaded, size)


def _billing_families(state: BillingState | None) -> Iterator[GaugeMetricFamily]:
    sampled = _gauge(
        "ocs_billing_sampled_timestamp_seconds",
        "When the billing state below was last read from PostgreSQL (Unix time).",
    )
    runs = _gauge("ocs_billing_runs", "Invoice runs by state (running, done).", ["state"])
    oldest = _gauge(
        "ocs_billing_oldest_running_run_age_seconds",
        "Seconds since the oldest run still drafting was created (0: none is running).",
    )
    unposted = _gauge(
        "ocs_billing_unposted_runs",
        "Drafted runs to be posted (auto_post) whose drafts are not all posted yet.",
    )
    unposted_age = _gauge(
        "ocs_billing_oldest_unposted_run_age_seconds",
        "Seconds since the oldest of those runs finished drafting (0: none waits).",
    )
    finished = _gauge(
        "ocs_billing_last_run_finished_timestamp_seconds",
        "When the latest finished run finished drafting (Unix time).",
    )
    duration = _gauge(
        "ocs_billing_last_run_duration_seconds",
        "How long the latest finished run took, from its creation to its last chunk.",
    )
    accounts = _gauge(
        "ocs_billing_latest_run_accounts",
        "The newest run's accounts: done and total.",
        ["progress"],
    )
    invoices = _gauge(
        "ocs_billing_latest_run_invoices",
        "The newest run's invoices by state (draft, posted, void).",
        ["state"],
    )
    deliveries = _gauge(
        "ocs_event_deliveries_by_state",
        "Event deliveries waiting (pending) or given up (dead), by channel (webhook, email).",
        ["channel", "state"],
    )
    if state is not None:
        sampled.add_metric([], state.at)
        for name in ("running", "done"):
            runs.add_metric([name], state.runs.get(name, 0))
        oldest.add_metric([], state.oldest_running_age)
        unposted.add_metric([], state.unposted_runs)
        unposted_age.add_metric([], state.oldest_unposted_age)
        if state.last_finished_at is not None:
            finished.add_metric([], state.last_finished_at)
        if state.last_duration is not None:
            duration.add_metric([], state.last_duration)
        for progress in ("done", "total"):
            accounts.add_metric([progress], state.latest_accounts.get(progress, 0))
        for name in ("draft", "posted", "void"):
            invoices.add_metric([name], state.latest_invoices.get(name, 0))
        for channel in ("webhook", "email"):
            for name in ("pending", "dead"):
                deliveries.add_metric([channel, name], state.deliveries.get((channel, name), 0))
    yield from (sampled, runs, oldest, unposted, unposted_age, finished, duration)
    yield from (accounts, invoices, deliveries)


# The one state collector of this process: registered on the default registry, and added
# to the workers' registry by ``exposition``.
STATE = StateCollector()
REGISTRY.register(STATE)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve this process's metrics at ``http://host:port/metrics`` from a thread: for a
    process with no HTTP API of its own (``ocs billing-worker``)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
