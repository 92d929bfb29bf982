"""Billing: what happens to calls after they are charged (re-rating; invoices later)."""
