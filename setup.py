"""Build script: ocs is pure Python unless ``OCS_MYPYC=1`` asks for its hot modules compiled.

With ``OCS_MYPYC=1`` the modules of ``ocs.compiled.HOT_MODULES`` are compiled with mypyc
(decision 0038), which needs mypy and a C compiler where the build runs:

    pip install mypy wheel && OCS_MYPYC=1 pip install --no-build-isolation -e .

Every build first removes the compiled files an earlier build left beside the sources,
so a pure build is pure, and records the SHA-256 of each source it compiles, so that
ocs refuses to import an extension whose source changed since.
"""

import json
import os
import runpy
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "ocs"
compiled = runpy.run_path(str(PACKAGE / "compiled.py"))
GROUP = compiled["GROUP"]  # mypyc's shared library: ocs__mypyc.<abi>.so at the top level


def remove_compiled() -> None:
    """Delete the extension files and the source record a compiled build left in the tree."""
    for module in compiled["HOT_MODULES"]:
        for path in compiled["compiled_files"](module, PACKAGE):
            path.unlink()
    for path in ROOT.glob(f"{GROUP}__mypyc*"):
        path.unlink()
    (PACKAGE / compiled["SOURCES_FILE"]).unlink(missing_ok=True)


def compiled_extensions() -> list[Any]:
    """The mypyc extensions of the hot modules, their sources' digests recorded."""
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        raise SystemExit(
            "OCS_MYPYC=1 needs mypy in the build environment: pip install mypy wheel, then "
            "OCS_MYPYC=1 pip install --no-build-isolation ."
        ) from exc
    sources = {
        module: compiled["source_path"](module, PACKAGE) for module in compiled["HOT_MODULES"]
    }
    digests = {module: compiled["source_digest"](path) for module, path in sources.items()}
    (PACKAGE / compiled["SOURCES_FILE"]).write_text(json.dumps(digests, indent=1) + "\n")
    paths = [str(path.relative_to(ROOT)) for path in sources.values()]
    return list(mypycify(paths, opt_level="3", group_name=GROUP))


remove_compiled()
setup(ext_modules=compiled_extensions() if os.environ.get("OCS_MYPYC") == "1" else [])
