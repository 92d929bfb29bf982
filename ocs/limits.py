"""Bounds that more than one layer checks: one place, so the API, the CLI, the
catalog and the call path cannot drift apart."""

from typing import Final

# The most lines (calls at once) an account, or a plan for its accounts, may hold.
MAX_LINES: Final = 10_000
# The longest call: the most a stop accepts, so also the longest a plan may grant
# (a call granted longer could never be stopped).
MAX_CALL_DURATION: Final = 7 * 24 * 3600
