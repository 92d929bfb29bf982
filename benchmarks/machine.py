"""One line describing the machine a benchmark ran on, for RESULTS.md."""

import os
import platform


def describe() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} cores, {model}, Python {python}, {platform.system()}"
