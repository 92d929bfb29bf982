"""The prefix matcher's first compile is announced, and `ocs warm-up` does it ahead of time.

A cold numba cache costs tens of seconds at the first start: the process says so before
it compiles and says when it is done, and only when it really compiles. The test gives
numba an empty cache directory of its own (NUMBA_CACHE_DIR), so it never disturbs the
cache beside the sources that other processes use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.embedded_helpers import child_env

COMPILE_TIMEOUT_S = 600.0  # a cold compile on a busy two-core machine


def _warm_up(tmp_path: Path) -> tuple[dict[str, object], str]:
    env = child_env(tmp_path / "xdg")
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
    done = subprocess.run(
        [sys.executable, "-m", "ocs", "warm-up", "--log-format", "text"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_warm_up_compiles_once_and_says_so_only_when_it_compiles(tmp_path: Path) -> None:
    first, said = _warm_up(tmp_path)
    assert first["compiled"] is True
    lines = said.splitlines()
    announce = [i for i, line in enumerate(lines) if "compiling the prefix matcher" in line]
    done = [i for i, line in enumerate(lines) if "prefix matcher compiled and cached" in line]
    assert len(announce) == 1 and len(done) == 1, said
    assert announce[0] < done[0], said  # said before the compile, not after
    assert "first start only" in lines[announce[0]]
    assert f"seconds={first['seconds']}" in lines[done[0]], said

    # The second process loads the machine code: no compile, nothing announced, quick.
    second, said_again = _warm_up(tmp_path)
    assert second["compiled"] is False
    assert "compiling" not in said_again, said_again
    assert "matcher kernels ready" in said_again
    assert isinstance(second["seconds"], float) and isinstance(first["seconds"], float)
    assert second["seconds"] < first["seconds"] / 5
    # Nothing was opened: warm-up needs no store.
    assert not (tmp_path / "xdg").exists()
