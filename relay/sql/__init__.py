"""Named SQL queries and migrations, loaded once from this package's folders.

Queries live in ``relay/sql/queries/*.sql`` as blocks that start with ``-- name: <name>``
(the procrastinate layout): SQL stays SQL, reviewable and greppable, and Python refers to
it by name.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

#: History counts (delivered and dead rows kept) are exact below this many rows and the
#: catalog's estimate above (``relay status``, the dead gauge): counting millions of finished
#: rows cost a read of each, at every refresh. Queries take it as ``%(exact_below)s``.
EXACT_COUNT_BELOW = 100_000

_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The folder of ``migrations/`` and ``queries/``: this package, in a checkout or a wheel."""
    return Path(__file__).parent


def parse_queries(text: str) -> dict[str, str]:
    """Split a ``-- name: x`` annotated file into ``{name: sql}``."""
    parts = _NAME_RE.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = body.strip().rstrip(";")
    return queries


@functools.cache
def all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, body in parse_queries(path.read_text()).items():
            if name in queries:
                raise ValueError(f"duplicate query name {name!r} in {path.name}")
            queries[name] = body
    return queries


def q(name: str) -> str:
    """The SQL text of the named query."""
    return all_queries()[name]


def migrations() -> list[tuple[int, str, str]]:
    """``[(version, name, sql)]`` in order, from ``relay/sql/migrations/NNNN_name.sql``."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append((int(number), name, path.read_text()))
    return found


def expected_schema_version() -> int:
    return max(version for version, _, _ in migrations())
