"""Write the API's OpenAPI document: ``python -m relay.api.openapi [PATH]`` (``make openapi``).

The checked-in ``docs/openapi.json`` is this output; a test compares it with the document a
live ``relay api`` serves, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from relay.api.app import create_app


def document() -> dict[str, Any]:
    """The OpenAPI document of the app (built without a database)."""
    return create_app(None).openapi()


def render() -> str:
    """The document as the checked-in file holds it."""
    return json.dumps(document(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
