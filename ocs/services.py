"""The services one ocs process runs, wired together once and shared by every adapter."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from ocs.balances.accounts import AccountService
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.cards import CardService
from ocs.balances.pin_guard import PinGuard
from ocs.balances.store import BalanceStore
from ocs.charging.catalog import CatalogHolder
from ocs.charging.lifecycle import CallRecord, CallService
from ocs.config import Settings
from ocs.counters.service import CounterService


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: Redis
    pool: asyncpg.Pool
    pipeline: AutoPipeline
    store: BalanceStore
    catalog: CatalogHolder
    accounts: AccountService
    calls: CallService
    counters: CounterService
    cards: CardService
    pin_guard: PinGuard
    # Set by `ocs serve` when RADIUS runs: asks a call's NAS to end it (RFC 5176).
    disconnect: Callable[[CallRecord], Awaitable[object]] | None = None
