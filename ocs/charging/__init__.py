"""Charging: the catalog snapshot, rating and the protocol-independent call lifecycle."""
