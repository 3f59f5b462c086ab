"""Process helpers shared by the tiers that start real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path


def terminate(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL: no process outlives its test.
    Returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (state first, then the parent pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``, sorted (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def running(pid: int) -> bool:
    """Alive and not a zombie: a zombie answers kill(0) but holds nothing (and not every
    container's init reaps orphans)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"
