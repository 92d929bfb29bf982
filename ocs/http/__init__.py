"""The HTTP JSON adapter (aiohttp): call lifecycle, accounts, catalog admin, health, metrics."""
