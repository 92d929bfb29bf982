"""Usage counters: bundles of seconds per cycle that calls to some zones use first."""
