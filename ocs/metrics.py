"""Prometheus metrics of an ocs process; every name starts with ``ocs_``.

Metrics are defined once here, at import, on the default registry, and the
HTTP adapter exposes them at ``/metrics``. Labels are bounded sets (endpoint
route names, reason codes), never account or call ids.
"""

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Set by `ocs serve --workers N` for its workers: each writes its samples to files
# there, and whichever worker a scrape reaches answers for all of them.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """The Prometheus text of this process, or of every worker when there are several."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        registry = CollectorRegistry()
        # prometheus_client leaves this constructor unannotated.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

HTTP_REQUESTS = Counter(
    "ocs_http_requests_total",
    "HTTP API requests by endpoint and result (ok or the rejection reason code).",
    ["endpoint", "method", "result"],
)
HTTP_LATENCY = Histogram(
    "ocs_http_request_duration_seconds",
    "HTTP API request latency by endpoint.",
    ["endpoint", "method"],
    buckets=_LATENCY_BUCKETS,
)
CALL_DECISIONS = Counter(
    "ocs_call_authorizations_total",
    "Call authorizations by result (granted or the rejection reason code).",
    ["result"],
)
CALL_STOPS = Counter(
    "ocs_call_stops_total",
    "Call stops by result (charged, repeated, or the rejection reason code).",
    ["result"],
)
LEDGER_WRITTEN = Counter(
    "ocs_ledger_entries_written_total",
    "Ledger stream entries committed to PostgreSQL by this process.",
)
LEDGER_DEAD_LETTERS = Counter(
    "ocs_ledger_dead_letters_total",
    "Ledger entries PostgreSQL refused, set aside in a dead-letter stream (alert on any).",
)
CATALOG_VERSION = Gauge(
    "ocs_catalog_reloads",
    "Number of catalog snapshots this process has loaded.",
    multiprocess_mode="max",
)
STALE_CALLS_CLOSED = Counter(
    "ocs_stale_calls_closed_total",
    "Live calls closed by the janitor or a NAS restart, by termination cause.",
    ["cause"],
)
RADIUS_PACKETS = Counter(
    "ocs_radius_packets_total",
    "RADIUS requests answered, by packet type and result (accept, reject, ok, error).",
    ["type", "result"],
)
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
RADIUS_DUPLICATES = Counter(
    "ocs_radius_duplicates_total",
    "Retransmitted RADIUS requests answered from the reply cache (RFC 5080).",
    ["type"],
)
RADIUS_LATENCY = Histogram(
    "ocs_radius_request_duration_seconds",
    "Time from a RADIUS request's arrival to its answer, by packet type.",
    ["type"],
    buckets=_LATENCY_BUCKETS,
)
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
    "Disconnect-Requests (RFC 5176) sent to cut a call, by outcome (ack, nak, timeout, ...).",
    ["outcome"],
)
BACKEND_UP = Gauge(
    "ocs_backend_up",
    "1 while this process reaches the backend (redis, postgresql), 0 while it does not.",
    ["backend"],
    multiprocess_mode="min",
)
BACKEND_OUTAGES = Counter(
    "ocs_backend_outages_total",
    "Times this process lost its backend (redis, postgresql).",
    ["backend"],
)
# Billing (issue 12): runs, drafts, postings. Labelled by bounded sets only (run state,
# stage, outcome); never by run, account or invoice id.
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
    "Billing worker steps that failed and will be retried, by stage (schedule, chunk).",
    ["stage"],
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve this process's metrics at ``http://host:port/metrics`` from a thread: for a
    process with no HTTP API of its own (``ocs billing-worker``)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
