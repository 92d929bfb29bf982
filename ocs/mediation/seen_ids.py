"""Where each record id of a usage import was first read, so that a repeat is found
(decision 0051: within an import, a record id is read once)."""

import numpy as np

# Record id digests kept in a dict before they join the sorted array (16 bytes a record).
SEEN_MERGE = 65_536


class SeenIds:
    """Where each record id of an import was first read, so that a repeat is found.

    An id is kept as its 64-bit hash (Python's keyed SipHash of the text) with its place
    (file index and line, packed): the newest in a dict, the rest in sorted numpy arrays
    (levels). Every ``SEEN_MERGE`` ids the dict becomes a level, and a level is merged
    into the one before it while that one is at most twice its size: each id is thus
    moved about log2(n / SEEN_MERGE) times, so merging costs about the same an id
    however long the import (one sorted array merged into every time grew with the ids
    read), and a look-up searches a few levels (its cost grows slowly with the ids kept:
    1.1 us an id at 4 million, benchmarks/seen_record_ids.py). About 16 bytes an id, so
    a million-row file keeps its ids in about 17 MB, where a dict of the texts takes
    about 60 MB more than the texts.
    Two distinct ids of one import share a hash with a chance of about 3 in 100 million
    for a million rows; the later row is then rejected naming the earlier one, which the
    operator can see is another id.
    """

    def __init__(self) -> None:
        """Nothing seen yet."""
        # (digests, places) pairs, each sorted by digest, the largest first.
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []
        self.recent: dict[int, int] = {}

    def clear(self) -> None:
        """Forget every id (the checking pass of an all-or-nothing import is over)."""
        self.levels = []
        self.recent = {}

    def claim(self, ids: list[str], places: list[int]) -> list[int]:
        """For each id in order, the place it was read at before (-1: first seen here);
        the new ones are kept, so a repeat within ``ids`` names its first place too."""
        hashes = list(map(hash, ids))
        recent = self.recent
        # Each id's first place among the newest (its own when it is new there).
        firsts = list(map(recent.setdefault, hashes, places))
        earlier = [
            -1 if first == place else first for first, place in zip(firsts, places, strict=True)
        ]
        if self.levels:
            # Looked for in sorted order: numpy's binary search then starts from the
            # previous key's place, and walks a large level far less at random.
            order = np.argsort(np.array(hashes, dtype=np.int64))
            wanted = np.array(hashes, dtype=np.int64)[order]
            for digests, kept_places in self.levels:
                at = np.minimum(np.searchsorted(digests, wanted), len(digests) - 1)
                for j in np.flatnonzero(digests[at] == wanted).tolist():
                    i = int(order[j])
                    if earlier[i] < 0:
                        del recent[hashes[i]]  # put there just now: a level has it
                    earlier[i] = int(kept_places[at[j]])
        if len(recent) >= SEEN_MERGE:
            self.merge()
        return earlier

    def merge(self) -> None:
        """Make the dict's ids a level, and merge levels while the one before is at most
        twice the size of the last (so sizes at least double toward the first)."""
        count = len(self.recent)
        digests = np.fromiter(self.recent.keys(), dtype=np.int64, count=count)
        places = np.fromiter(self.recent.values(), dtype=np.int64, count=count)
        order = np.argsort(digests)
        levels = self.levels
        levels.append((digests[order], places[order]))
        self.recent = {}
        while len(levels) > 1 and len(levels[-2][0]) <= 2 * len(levels[-1][0]):
            small_digests, small_places = levels.pop()
            big_digests, big_places = levels.pop()
            at = np.searchsorted(big_digests, small_digests)
            levels.append(
                (np.insert(big_digests, at, small_digests), np.insert(big_places, at, small_places))
            )
