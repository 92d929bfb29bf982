"""The services one ocs process runs, wired together once and shared by every adapter."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from ocs import backend_health
from ocs.backend_health import BackendHealth
from ocs.balances.accounts import AccountService
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.cards import CardService
from ocs.balances.cluster import RedisClient
from ocs.balances.digests import Digests
from ocs.balances.old_forms import OldForms
from ocs.balances.pin_guard import PinGuard
from ocs.balances.store import BalanceStore
from ocs.catalog.snapshot import CatalogHolder
from ocs.charging.lifecycle import CallService
from ocs.charging.values import CallRecord
from ocs.config import Settings
from ocs.counters.service import CounterService
from ocs.db.listener import ChannelListener


@dataclass(slots=True)
class Services:
    """Every service of one process, built once by ``open_runtime`` and shared by the adapters."""

    settings: Settings
    redis: RedisClient
    pool: asyncpg.Pool
    # The PostgreSQL the pool connects to (the embedded one's, when embedded): what a
    # connection of its own outside the pool is opened with (a usage import's lock).
    database_url: str
    pipeline: AutoPipeline
    store: BalanceStore
    catalog: CatalogHolder
    # PIN and password digests keyed by the deployment's pepper (decision 0054).
    digests: Digests
    # Whether a PIN no new-form digest opens is looked up by its old form too: not once
    # `ocs credentials rekey` has left none (decision 0054, 2026-12-07 addendum).
    old_forms: OldForms
    accounts: AccountService
    calls: CallService
    counters: CounterService
    cards: CardService
    pin_guard: PinGuard
    # Set by `ocs serve` when RADIUS runs: asks a call's NAS to end it (RFC 5176).
    disconnect: Callable[[CallRecord], Awaitable[object]] | None = None
    # The PostgreSQL LISTENs this process follows besides the catalog's (`ocs serve`
    # adds the NAS client table's), for /readyz: changes missed while one is lost.
    listeners: list[ChannelListener] = field(default_factory=list)
    # The process's backend tracker (one per process: the auto-pipeline, janitor and
    # ledger writer report to the same one), for /readyz.
    health: BackendHealth = field(default_factory=backend_health.default)
    # The migrations ``open_runtime`` applied when it opened these services (versions):
    # what `ocs db migrate` reports, since they are applied before any command runs.
    migrated_now: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The tracker exists before the settings are read; this is where they reach it.
        self.health.reminder = self.settings.backend_down_reminder
