"""How long a newcomer's first `ocs demo` takes to answer, with and without `ocs warm-up`.

Times `ocs demo` from launch to its first `/healthz` 200, each in a fresh data
directory and a fresh numba cache (``NUMBA_CACHE_DIR``), so the prefix
matcher's kernels really compile:

    A  first demo, cold cache
    B  second demo, warm cache (same data directory)
    C  `ocs warm-up`, cold cache, then D the same again, warm
    E  first demo after `ocs warm-up`, new data directory

    python benchmarks/first_start.py

Prints each figure and the machine it ran on.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.machine import describe

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_demo(env: dict[str, str], workdir: Path) -> float:
    """Seconds from launching `ocs demo` to its first healthy answer; stops it after."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocs",
            "demo",
            "--http-port",
            str(port),
            "--radius-auth-port",
            "0",
            "--radius-acct-port",
            "0",
        ],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"ocs demo exited with {process.returncode}")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


def time_warm_up(env: dict[str, str], workdir: Path) -> float:
    """Seconds `ocs warm-up` takes."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "ocs", "warm-up"],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def main() -> None:
    """Run the five measurements and print them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    root = Path(tempfile.mkdtemp(prefix="ocs-first-start-"))
    first = dict(base, XDG_DATA_HOME=str(root / "data1"), NUMBA_CACHE_DIR=str(root / "numba1"))
    second = dict(base, XDG_DATA_HOME=str(root / "data2"), NUMBA_CACHE_DIR=str(root / "numba2"))
    print(f"A first ocs demo, cold cache: ready after {time_demo(first, root):.1f} s", flush=True)
    print(f"B second ocs demo, warm cache: ready after {time_demo(first, root):.1f} s", flush=True)
    print(f"C ocs warm-up, cold cache: {time_warm_up(second, root):.1f} s", flush=True)
    print(f"D ocs warm-up, warm cache: {time_warm_up(second, root):.1f} s", flush=True)
    print(
        f"E first ocs demo after ocs warm-up: ready after {time_demo(second, root):.1f} s",
        flush=True,
    )
    print(f"machine: {describe()}")


if __name__ == "__main__":
    main()
