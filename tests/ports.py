"""Free ports on 127.0.0.1 for the servers and child processes tests start.

Not a test module, and it imports nothing of the tests: tests/conftest.py and the
helper modules it uses take their ports from here without an import loop.
"""

import socket


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 nothing listens on right now (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
