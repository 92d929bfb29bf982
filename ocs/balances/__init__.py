"""Balances: real-time account state in Redis, changed only by Lua scripts, and its ledger."""
