"""The ``relay`` command line: argument parsing and the thin shell over :mod:`relay.admin`.

``main(argv) -> int`` never exits the interpreter itself, so tests call it in-process. Exit
codes: 0 success, 2 usage or validation error, 1 runtime error (database unreachable, not
found). Every error is one ``relay: error: ...`` line on stderr naming the field.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from relay import admin, crypto
from relay.admin import format as fmt
from relay.admin import retention
from relay.admin import validation as v
from relay.admin.db import Conn, db_errors
from relay.cli.parser import ParserExit, UsageError, build_parser
from relay.config import SETTINGS, duration_seconds, load
from relay.embedded import connect, resolve_database_url
from relay.errors import ConfigError, EmitError, RelayError, ValidationError
from relay.sql.migrate import migrate

Handler = Callable[[argparse.Namespace], int]


def _error(message: object) -> None:
    print(f"relay: error: {message}", file=sys.stderr)


# Connections ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _connect(args: argparse.Namespace, *, auto_migrate: bool = True) -> Iterator[Conn]:
    """An autocommit connection to the chosen database (see :mod:`relay.embedded`)."""
    # An embedded database is migrated as it is resolved: a first `relay subscription add`
    # works before `relay run` ever started.
    url = resolve_database_url(args.database_url, migrate=auto_migrate)
    conn = connect(url)
    # db_errors: a driver error anywhere in the command becomes one `relay: error:` line.
    with db_errors(), conn:
        yield conn


# Commands ---------------------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    with _connect(args, auto_migrate=False) as conn:
        applied = migrate(conn)
    if applied:
        print("applied migrations: " + ", ".join(f"{n:04d}" for n in applied))
    else:
        print("schema up to date")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    flags = {s.name: getattr(args, "setting_" + s.name) for s in SETTINGS}
    config = load(flags)
    if args.print_config:
        print(json.dumps(config.masked(), indent=2))
        return 0
    if config.processes > 1:
        supervisor: Any = importlib.import_module("relay.daemon.supervisor")
        return int(supervisor.supervise(config, config.processes))
    # Imported here: the daemon pulls in aiohttp & co, which no other command needs.
    daemon: Any = importlib.import_module("relay.daemon.service")
    return int(daemon.main(config))


def _cmd_api(args: argparse.Namespace) -> int:
    from relay.api.config import API_SETTINGS, load_api

    config = load_api({s.name: getattr(args, "setting_" + s.name) for s in API_SETTINGS})
    if args.print_config:
        print(json.dumps(config.masked(), indent=2))
        return 0
    # Imported here: FastAPI and uvicorn are only needed by this command.
    server: Any = importlib.import_module("relay.api.server")
    return int(server.main(config))


def _cmd_api_key_create(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        key, _row = admin.create_api_key(conn, tenant=args.tenant, name=args.name)
    print(key)  # the only time it is shown: only its hash is stored
    return 0


def _cmd_api_key_list(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = admin.list_api_keys(conn)
    print(fmt.to_json(rows) if args.json else fmt.table(rows, fmt.API_KEY_COLUMNS))
    return 0


def _cmd_api_key_revoke(args: argparse.Namespace) -> int:
    key_id = v.parse_id(args.id)
    with _connect(args) as conn:
        admin.revoke_api_key(conn, key_id)
    print(f"revoked api key {key_id}")
    return 0


def _cmd_demo(argv: list[str]) -> int:
    demo: Any = importlib.import_module("relay.demo")
    return int(demo.main(argv))


def _changes(args: argparse.Namespace, update: bool) -> admin.SubscriptionChanges:
    headers: dict[str, str] = {}
    for raw in args.header or []:
        name, value = v.parse_header(raw)
        headers[name] = value
    event_names = dict(v.parse_event_name(raw) for raw in args.event_name or [])
    changes = admin.SubscriptionChanges(
        url=args.url,
        method=args.method,
        headers=headers if args.header else None,
        events=args.event,
        event_names=event_names if args.event_name else None,
        body_map=args.body_map,
        secret=args.secret,
        tenant_id=args.tenant,
        max_retries=args.max_retries,
        backoff_ms=args.backoff_ms,
        timeout_ms=args.timeout_ms,
        enabled=False if args.disabled else None,
        ordered=args.ordered,
    )
    if update:
        changes.clear_headers = args.clear_header or []
        changes.clear_events = args.clear_events
        changes.clear_event_names = args.clear_event_name or []
        changes.clear_body_map = args.clear_body_map
        changes.clear_secret = args.clear_secret
        changes.clear_tenant = args.clear_tenant
        if args.secret_overlap is not None:
            if args.secret is None:
                raise ValidationError("secret_overlap", "goes with --secret (a new secret)")
            changes.secret_overlap_s = v.parse_duration("secret_overlap", args.secret_overlap)
    return changes


def _show_generated(result: admin.SubscriptionResult) -> None:
    if result.generated_secret:
        # The only time the secret is ever shown: stderr, so `id=$(relay subscription add ...)`
        # still captures the id alone.
        print(
            f"relay: signing secret (shown only once, store it now): {result.generated_secret}",
            file=sys.stderr,
        )


def _cmd_sub_add(args: argparse.Namespace) -> int:
    changes = _changes(args, update=False)  # parse everything before touching the database
    with _connect(args) as conn:
        result = admin.add_subscription(conn, changes)
    print(result.id)
    _show_generated(result)
    return 0


def _cmd_sub_update(args: argparse.Namespace) -> int:
    sub_id = v.parse_id(args.id)
    changes = _changes(args, update=True)
    with _connect(args) as conn:
        result = admin.update_subscription(conn, sub_id, changes)
    print(f"updated subscription {sub_id}: {', '.join(result.changed) or 'no changes'}")
    _show_generated(result)
    return 0


def _cmd_sub_list(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = admin.list_subscriptions(conn, include_removed=args.all)
    print(fmt.to_json(rows) if args.json else fmt.table(rows, fmt.SUBSCRIPTION_COLUMNS))
    return 0


def _cmd_sub_show(args: argparse.Namespace) -> int:
    sub_id = v.parse_id(args.id)
    with _connect(args) as conn:
        row = admin.get_subscription(conn, sub_id)
    print(fmt.to_json(row) if args.json else fmt.fields(row, fmt.SUBSCRIPTION_FIELDS))
    return 0


def _cmd_sub_enable(args: argparse.Namespace, enable: bool) -> int:
    sub_id = v.parse_id(args.id)
    with _connect(args) as conn:
        admin.set_enabled(conn, sub_id, enable)
    print(f"{'enabled' if enable else 'disabled'} subscription {sub_id}")
    return 0


def _cmd_sub_remove(args: argparse.Namespace) -> int:
    sub_id = v.parse_id(args.id)
    with _connect(args) as conn:
        killed = admin.remove_subscription(conn, sub_id)
    print(f"removed subscription {sub_id} ({killed} pending deliveries marked dead)")
    return 0


def _cmd_delivery_list(args: argparse.Namespace) -> int:
    sub_id = None if args.subscription is None else v.parse_id(args.subscription, "subscription")
    limit = v.validate_int("limit", args.limit, 1, 100_000)
    with _connect(args) as conn:
        rows = admin.list_deliveries(
            conn,
            status=args.status,
            subscription_id=sub_id,
            event_type=args.event_type,
            limit=limit,
        )
    print(fmt.to_json(rows) if args.json else fmt.table(rows, fmt.DELIVERY_COLUMNS))
    return 0


def _cmd_delivery_show(args: argparse.Namespace) -> int:
    delivery_id = v.parse_id(args.id)
    with _connect(args) as conn:
        row = admin.get_delivery(conn, delivery_id)
    print(fmt.to_json(row) if args.json else fmt.render_delivery(row))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    if args.dead == bool(args.ids):
        raise UsageError("give delivery IDs or --dead (not both)")
    if args.ids and (args.subscription is not None or args.since is not None):
        raise UsageError("--subscription and --since only apply with --dead")
    ids = [v.parse_id(raw) for raw in args.ids]
    sub_id = None if args.subscription is None else v.parse_id(args.subscription, "subscription")
    with _connect(args) as conn:
        if ids:
            count = admin.replay(conn, ids)
        else:
            since = None
            if args.since is not None:
                now = datetime.now().astimezone()
                since = v.parse_since(args.since, now)
            count = admin.replay_dead(conn, subscription_id=sub_id, since=since)
    print(f"replayed {count} {'delivery' if count == 1 else 'deliveries'}")
    return 0


def _older_than(raw: str | None) -> tuple[str, int]:
    """``relay prune``'s cutoff as (shown, seconds): --older-than, else the retention setting
    (RELAY_RETENTION, default 30d)."""
    if raw is not None:
        try:
            return raw.strip(), duration_seconds(raw)
        except ValueError as exc:
            raise ValidationError("older_than", f"{exc}; got {raw!r}") from None
    setting = os.environ.get("RELAY_RETENTION", "").strip().lower() or "30d"
    if setting == "off":
        raise ValidationError(
            "older_than", "RELAY_RETENTION is off (keep everything): give --older-than DURATION"
        )
    try:
        return setting, duration_seconds(setting)
    except ValueError as exc:
        raise ConfigError(f"RELAY_RETENTION (retention): {exc} (got {setting!r})") from None


def _cmd_prune(args: argparse.Namespace) -> int:
    shown, seconds = _older_than(args.older_than)  # validated before connecting
    with _connect(args) as conn:
        counts = (
            retention.preview(conn, seconds) if args.dry_run else retention.prune(conn, seconds)
        )
    if args.json:
        print(fmt.to_json({"older_than": shown, "dry_run": args.dry_run, **counts}))
    else:
        verb = "would prune" if args.dry_run else "pruned"
        print(f"{verb} history older than {shown}:")
        print("\n".join(f"  {table:<18} {n}" for table, n in counts.items()))
    return 0


def _cmd_emit(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        outbox_id = admin.emit(
            conn,
            args.type,
            args.payload,
            aggregate_id=args.aggregate_id,
            tenant_id=args.tenant,
            version=args.version,
        )
    print(outbox_id)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        info = admin.status(conn)
    print(fmt.to_json(info) if args.json else fmt.render_status(info))
    return 0


def _cmd_event_type_list(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = admin.list_event_types(conn)
    print(fmt.to_json(rows) if args.json else fmt.table(rows, fmt.EVENT_TYPE_COLUMNS))
    return 0


def _cmd_event_type_add(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        name = admin.add_event_type(conn, args.name, args.object, args.description)
    print(name)
    return 0


def _cmd_encryption_key_generate(args: argparse.Namespace) -> int:
    print(crypto.generate_key())
    return 0


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    keyring = crypto.load_keyring()
    with _connect(args) as conn:
        result = admin.rotate_key(conn, keyring)
    print(
        f"re-encrypted {len(result.reencrypted)} subscription(s) with the current key, "
        f"encrypted {len(result.encrypted)} from plain text, "
        f"{result.current} already current"
    )
    return 0


def _cmd_portal_link(args: argparse.Namespace) -> int:
    from relay.portal import links  # the portal's link module; needs no web framework

    if args.tenant is None:
        raise ValidationError("tenant", "is required (--tenant T)")
    with _connect(args) as conn:
        url, row = links.create_portal_link_row(conn, args.tenant, args.ttl, args.base_url)
    print(url)
    # The link is the credential: stdout only. Its id (for revoking) goes to stderr.
    print(
        f"relay: link {row['id']} expires {row['expires_at'].isoformat(timespec='seconds')}; "
        f"revoke with `relay portal-link revoke {row['id']}`",
        file=sys.stderr,
    )
    return 0


def _cmd_portal_link_revoke(args: argparse.Namespace) -> int:
    from relay.portal import links

    if (args.id is None) == (args.revoke_tenant is None):
        raise UsageError("give a link ID or --tenant T (not both)")
    with _connect(args) as conn:
        if args.id is not None:
            links.revoke_link(conn, args.id)
            print(f"revoked portal link {args.id}")
        else:
            count = links.revoke_tenant(conn, args.revoke_tenant)
            print(f"revoked {count} portal link{'' if count == 1 else 's'} of {args.revoke_tenant}")
    return 0


def _cmd_portal_link_list(args: argparse.Namespace) -> int:
    from relay.portal import links

    with _connect(args) as conn:
        rows = links.list_links(conn, args.list_tenant)
    print(fmt.to_json(rows) if args.json else fmt.table(rows, fmt.PORTAL_LINK_COLUMNS))
    return 0


# Entry point ------------------------------------------------------------------------------------


_HANDLERS: dict[str, Handler] = {
    "migrate": _cmd_migrate,
    "run": _cmd_run,
    "subscription add": _cmd_sub_add,
    "subscription list": _cmd_sub_list,
    "subscription show": _cmd_sub_show,
    "subscription update": _cmd_sub_update,
    "subscription enable": lambda args: _cmd_sub_enable(args, True),
    "subscription disable": lambda args: _cmd_sub_enable(args, False),
    "subscription remove": _cmd_sub_remove,
    "delivery list": _cmd_delivery_list,
    "delivery show": _cmd_delivery_show,
    "replay": _cmd_replay,
    "prune": _cmd_prune,
    "emit": _cmd_emit,
    "status": _cmd_status,
    "event-type list": _cmd_event_type_list,
    "event-type add": _cmd_event_type_add,
    "encryption-key generate": _cmd_encryption_key_generate,
    "rotate-key": _cmd_rotate_key,
    "api": _cmd_api,
    "api-key create": _cmd_api_key_create,
    "api-key list": _cmd_api_key_list,
    "api-key revoke": _cmd_api_key_revoke,
    "portal-link": _cmd_portal_link,
    "portal-link revoke": _cmd_portal_link_revoke,
    "portal-link list": _cmd_portal_link_list,
    "demo": lambda args: _cmd_demo([]),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``relay`` command; return its exit code (0 ok, 1 runtime error, 2 usage)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments[:1] == ["demo"]:
            # The demo parses its own flags; everything after `demo` is passed on untouched.
            return _cmd_demo(arguments[1:])
        args = build_parser().parse_args(arguments)
        if args.command != "encryption-key generate":
            # Every command checks RELAY_ENCRYPTION_KEY up front: a malformed key is a
            # configuration error (exit 2) before anything is read or written.
            crypto.load_keyring()
        return _HANDLERS[args.command](args)
    except ParserExit as exc:
        return exc.status
    except UsageError as exc:
        if exc.usage:
            sys.stderr.write(exc.usage)
        _error(exc)
        return 2
    except (ValidationError, EmitError, ConfigError) as exc:
        _error(exc)
        return 2
    except RelayError as exc:
        _error(exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `relay delivery list | head`: the reader left; nothing useful to report.
        return 0


__all__ = ["main"]
