"""``python -m relay``: the same as the ``relay`` console script."""

from __future__ import annotations

from relay.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
