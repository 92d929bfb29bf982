"""The RADIUS front end: a hardened UDP server over the protocol-independent call lifecycle."""
