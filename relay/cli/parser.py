"""The argument parser of the ``relay`` command line (the handlers are in :mod:`relay.cli`).

Each leaf command records its name in ``args.command`` (``"subscription add"``), which
:mod:`relay.cli` maps to a handler; parsing alone never touches the database.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from relay import __version__
from relay.admin.deliveries import DEFAULT_LIMIT, STATUSES
from relay.config import SETTINGS


class UsageError(Exception):
    """A command line argparse refused; carries the usage line of the (sub)command."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class ParserExit(Exception):
    """argparse finished early (``--help``, ``--version``) with this exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    # argparse would call sys.exit(); raising keeps relay.cli.main() returning an exit code.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise ParserExit(status)


def _parent_db() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help="Postgres URL (default: $RELAY_DATABASE_URL, else an embedded Postgres)",
    )
    return p


def _parent_json() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _subscription_options(p: argparse.ArgumentParser, update: bool) -> None:
    if update:
        p.add_argument("--url", help="new target URL (http or https)")
    p.add_argument("--method", help="GET or POST (default POST)")
    p.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="extra HTTP header (repeatable); values are never shown again",
    )
    p.add_argument(
        "--event",
        action="append",
        metavar="TYPE",
        help="event type or glob like 'order.*' (repeatable; none = every type)",
    )
    p.add_argument(
        "--event-name",
        action="append",
        metavar="TYPE=NAME",
        help="eventType sent for TYPE (default: TYPE upper-cased; repeatable)",
    )
    p.add_argument(
        "--body-map", metavar="JSON", help='request body mapping, e.g. \'{"type": "$.eventType"}\''
    )
    p.add_argument(
        "--secret",
        metavar="whsec_...|generate",
        help="signing secret; 'generate' makes one and prints it once on stderr",
    )
    p.add_argument("--tenant", metavar="T", help="only receive events of this tenant")
    p.add_argument("--max-retries", metavar="N", help="retries after the first attempt (default 3)")
    p.add_argument("--backoff-ms", metavar="MS", help="retry n waits n x MS (default 5000)")
    p.add_argument("--timeout-ms", metavar="MS", help="HTTP timeout (default 10000)")
    p.add_argument("--disabled", action="store_true", help="create/leave it disabled")
    order = p.add_mutually_exclusive_group()
    order.add_argument(
        "--ordered",
        action="store_const",
        const=True,
        dest="ordered",
        help="deliver the events of one aggregate_id one at a time, in outbox id order",
    )
    if update:
        order.add_argument(
            "--unordered",
            action="store_const",
            const=False,
            dest="ordered",
            help="deliver without ordering (the default)",
        )
    if update:
        p.add_argument(
            "--clear-header", action="append", metavar="NAME", help="remove a header (repeatable)"
        )
        p.add_argument(
            "--clear-event-name",
            action="append",
            metavar="TYPE",
            help="drop the eventType override of TYPE (repeatable)",
        )
        p.add_argument("--clear-body-map", action="store_true", help="send the default body")
        p.add_argument("--clear-secret", action="store_true", help="stop signing")
        p.add_argument(
            "--secret-overlap",
            metavar="DURATION",
            help="with --secret: the replaced secret keeps signing too for this long "
            "(default 24h; 0 = stop at once)",
        )
        p.add_argument("--clear-tenant", action="store_true", help="make it internal (all tenants)")
        p.add_argument("--clear-events", action="store_true", help="receive every event type")


def _add_subscription_commands(
    sub: argparse._SubParsersAction[_Parser], db: _Parser, js: _Parser
) -> None:
    p = sub.add_parser("subscription", help="manage webhook subscriptions")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("add", parents=[db], help="create a subscription; prints its id")
    a.add_argument("url", metavar="URL", help="target URL (http or https)")
    _subscription_options(a, update=False)
    a.set_defaults(command="subscription add")

    a = actions.add_parser("list", parents=[db, js], help="list subscriptions")
    a.add_argument("--all", action="store_true", help="include removed subscriptions")
    a.set_defaults(command="subscription list")

    a = actions.add_parser("show", parents=[db, js], help="show one subscription")
    a.add_argument("id", metavar="ID")
    a.set_defaults(command="subscription show")

    a = actions.add_parser("update", parents=[db], help="change a subscription")
    a.add_argument("id", metavar="ID")
    _subscription_options(a, update=True)
    a.set_defaults(command="subscription update")

    for name, text in (
        ("enable", "resume deliveries"),
        ("disable", "pause deliveries"),
        ("remove", "soft-delete (pending deliveries end dead; history kept)"),
    ):
        a = actions.add_parser(name, parents=[db], help=text)
        a.add_argument("id", metavar="ID")
        a.set_defaults(command=f"subscription {name}")


def _add_run_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("run", help="run the relay daemon")
    for s in SETTINGS:
        default = "" if s.default is None else f"; default {s.default}"
        p.add_argument(
            s.flag,
            dest="setting_" + s.name,
            metavar="VALUE",
            default=None,
            help=f"{s.help} [${s.env}{default}]",
        )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (passwords masked) as JSON and exit",
    )
    p.set_defaults(command="run")


def _add_api_commands(sub: argparse._SubParsersAction[_Parser], db: _Parser, js: _Parser) -> None:
    from relay.api.config import API_SETTINGS

    p = sub.add_parser("api", help="serve the JSON HTTP API (issue keys with `relay api-key`)")
    for s in API_SETTINGS:
        default = "" if s.default is None else f"; default {s.default}"
        p.add_argument(
            s.flag,
            dest="setting_" + s.name,
            metavar="VALUE",
            default=None,
            help=f"{s.help} [${s.env}{default}]",
        )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (passwords masked) as JSON and exit",
    )
    p.set_defaults(command="api")

    p = sub.add_parser("api-key", help="keys of the HTTP API")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("create", parents=[db], help="make a key; prints it once, on stdout")
    a.add_argument("--tenant", metavar="T", help="scope the key to this tenant (else: operator)")
    a.add_argument("--name", metavar="NAME", default="", help="a label for `api-key list`")
    a.set_defaults(command="api-key create")
    a = actions.add_parser("list", parents=[db, js], help="list keys (never the keys themselves)")
    a.set_defaults(command="api-key list")
    a = actions.add_parser("revoke", parents=[db], help="revoke a key: it gets 401 from now on")
    a.add_argument("id", metavar="ID")
    a.set_defaults(command="api-key revoke")


def _add_portal_link_command(
    sub: argparse._SubParsersAction[_Parser], db: _Parser, js: _Parser
) -> None:
    p = sub.add_parser(
        "portal-link",
        parents=[db],
        help="print a link that opens a tenant's portal (or list/revoke links)",
    )
    p.add_argument("--tenant", metavar="T", help="the tenant whose portal the link opens")
    p.add_argument("--ttl", metavar="DURATION", default="1h", help="valid for (default 1h)")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="where the portal is served (default http:// + $RELAY_API_ADDR, 127.0.0.1:8480)",
    )
    p.set_defaults(command="portal-link")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("revoke", parents=[db], help="revoke a link, or every link of a tenant")
    a.add_argument("id", metavar="ID", nargs="?", help="the link id printed on creation")
    a.add_argument("--tenant", dest="revoke_tenant", metavar="T", help="revoke all of T's links")
    a.set_defaults(command="portal-link revoke")
    a = actions.add_parser("list", parents=[db, js], help="links handed out, newest first")
    a.add_argument("--tenant", dest="list_tenant", metavar="T")
    a.set_defaults(command="portal-link list")


def build_parser() -> _Parser:
    """The full ``relay`` parser."""
    db, js = _parent_db(), _parent_json()
    parser = _Parser(prog="relay", description="Postgres outbox → webhook relay.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    p = sub.add_parser("migrate", parents=[db], help="create or upgrade the schema")
    p.set_defaults(command="migrate")
    _add_run_command(sub)
    _add_subscription_commands(sub, db, js)
    _add_api_commands(sub, db, js)

    p = sub.add_parser("delivery", help="delivery history")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", parents=[db, js], help="list deliveries, newest first")
    a.add_argument("--status", choices=STATUSES)
    a.add_argument("--subscription", metavar="ID")
    a.add_argument("--event-type", metavar="TYPE")
    a.add_argument(
        "--limit",
        metavar="N",
        default=str(DEFAULT_LIMIT),
        help=f"at most N rows (default {DEFAULT_LIMIT})",
    )
    a.set_defaults(command="delivery list")
    a = actions.add_parser("show", parents=[db, js], help="one delivery with every attempt")
    a.add_argument("id", metavar="ID")
    a.set_defaults(command="delivery show")

    p = sub.add_parser(
        "replay", parents=[db], help="retry deliveries with a fresh budget (history kept)"
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="delivery ids")
    p.add_argument("--dead", action="store_true", help="replay every dead delivery")
    p.add_argument("--subscription", metavar="ID", help="with --dead: only this subscription")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="with --dead: dead since TIME (ISO 8601, or a duration like 30m, 2h, 1d)",
    )
    p.set_defaults(command="replay")

    p = sub.add_parser(
        "prune",
        parents=[db, js],
        help="delete finished history (delivered/dead deliveries, their attempts and events)",
    )
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="what ended longer ago than this, e.g. 90s, 15m, 2h, 30d "
        "(default: $RELAY_RETENTION, else 30d)",
    )
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.set_defaults(command="prune")

    p = sub.add_parser("emit", parents=[db], help="write one event to the outbox")
    p.add_argument("type", metavar="TYPE", help="event type, e.g. order.created")
    p.add_argument("payload", metavar="JSON", help="payload: a JSON object")
    p.add_argument("--aggregate-id", metavar="X")
    p.add_argument("--tenant", metavar="T")
    p.add_argument("--version", metavar="V", default="v1", help="event version (default v1)")
    p.set_defaults(command="emit")

    p = sub.add_parser("status", parents=[db, js], help="backlog, dead count, relays seen")
    p.set_defaults(command="status")

    p = sub.add_parser("encryption-key", help="keys for RELAY_ENCRYPTION_KEY")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("generate", help="print a new key alone on stdout")
    a.set_defaults(command="encryption-key generate")
    p = sub.add_parser(
        "rotate-key",
        parents=[db],
        help="encrypt every subscription's credentials with the first RELAY_ENCRYPTION_KEY key",
    )
    p.set_defaults(command="rotate-key")

    p = sub.add_parser("event-type", help="the event-type catalog")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", parents=[db, js], help="list event types")
    a.set_defaults(command="event-type list")
    a = actions.add_parser("add", parents=[db], help="register an event type")
    a.add_argument("name", metavar="NAME", help="lowercase 'area.event_name'")
    a.add_argument("--object", default="", metavar="O", help="object name, e.g. Order")
    a.add_argument("--description", default="", metavar="D")
    a.set_defaults(command="event-type add")

    _add_portal_link_command(sub, db, js)

    # Listed for --help only: relay.cli.main hands `demo ...` to relay.demo before parsing.
    p = sub.add_parser("demo", help="the whole flow end to end (embedded Postgres if none)")
    p.set_defaults(command="demo")
    return parser
