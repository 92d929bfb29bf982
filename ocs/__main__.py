"""`python -m ocs`: the same entry point as the `ocs` console script."""

from ocs.cli import main

raise SystemExit(main())
