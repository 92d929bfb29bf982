"""ocs: a real-time Online Charging System and AAA server.

Switches, gateways and calling-card IVRs ask ocs, per call, whether the call
may go through and for how long; ocs holds the funds while the call runs,
charges it exactly when it ends and keeps every balance change in a ledger.
"""

from ocs.compiled import refuse_unusable_build

__version__ = "0.1.0"

# A build with compiled modules (decision 0038) must run the sources it was built from,
# and be loadable here: otherwise one line and exit code 2, which the units do not restart.
refuse_unusable_build()
