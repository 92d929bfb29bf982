"""Rating: pure functions from a rate, a duration and a time to an amount (no I/O)."""
