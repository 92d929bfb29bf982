"""The ocs test suite: a package, so test modules import its helper modules as ``tests.*``.

Helper modules (tests/*.py not named ``test_*``) hold what several test files share;
fixtures are in tests/conftest.py. No test module imports another
(tests/test_import_graph.py checks it).
"""

import pytest

# Asserts in the helper modules fail with pytest's detailed message, as they did in
# the test modules they were moved from. Registered before conftest imports them.
pytest.register_assert_rewrite(
    "tests.billing_helpers",
    "tests.deck_helpers",
    "tests.embedded_helpers",
    "tests.helpers",
    "tests.nas_emulator",
    "tests.outage_helpers",
    "tests.ports",
    "tests.radclient",
    "tests.radius_udp",
    "tests.serve_process",
)
