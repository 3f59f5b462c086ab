"""Process helpers shared by the tiers that start real processes."""

from __future__ import annotations

import subprocess


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
