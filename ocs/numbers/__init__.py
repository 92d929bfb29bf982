"""Numbers: the prefix matcher (numba), its prefetching lookups and prefix tables."""
