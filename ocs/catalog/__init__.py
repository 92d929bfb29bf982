"""Catalog: plans, tariffs, routes and number plans as stored in PostgreSQL and held in memory."""
