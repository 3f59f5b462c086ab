"""The test webhook receiver: :mod:`relay.testing.receiver` (in-process) and
:mod:`relay.testing.receiver_process` (a separate process), under the names the tests import.

Still runnable as a script for a receiver process::

    python tests/receiver.py --port 0 --log FILE [--status 204] [--fail-every N]
"""

from __future__ import annotations

from relay.testing.receiver import (
    Behaviour,
    Received,
    Receiver,
    hang,
    huge,
    redirect,
    reset,
    respond,
)
from relay.testing.receiver_process import (
    ReceiverProcess,
    main,
    read_line,
    start_receiver_process,
)

__all__ = [
    "Behaviour",
    "Received",
    "Receiver",
    "ReceiverProcess",
    "hang",
    "huge",
    "read_line",
    "redirect",
    "reset",
    "respond",
    "start_receiver_process",
]

if __name__ == "__main__":
    main()
