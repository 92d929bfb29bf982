"""The services one ocs process runs, wired together once and shared by every adapter."""

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from ocs.balances.accounts import AccountService
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.store import BalanceStore
from ocs.charging.catalog import CatalogHolder
from ocs.charging.lifecycle import CallService
from ocs.config import Settings


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
