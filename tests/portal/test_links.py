"""Portal links: signed, expiring, revocable, refused when altered (real Postgres)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from relay.cli import main
from relay.errors import NotFound, ValidationError
from relay.portal import links
from relay.portal.links import LinkRefused


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_a_link_opens_its_tenant_until_it_expires(conn: psycopg.Connection[Any]) -> None:
    url = links.create_portal_link(conn, "acme", "1h", "https://portal.example")
    assert url.startswith("https://portal.example/portal/enter?token=")
    session = links.verify_token(conn, _token(url))
    assert session.tenant == "acme"
    assert abs(session.expires - (time.time() + 3600)) < 60
    with pytest.raises(LinkRefused, match="expired"):
        links.verify_token(conn, _token(url), now=time.time() + 3601)


def test_the_database_expiry_is_checked_too(conn: psycopg.Connection[Any]) -> None:
    url = links.create_portal_link(conn, "acme", 60, "http://127.0.0.1:1")
    conn.execute("UPDATE relay.portal_links SET expires_at = now() - interval '1 s'")
    with pytest.raises(LinkRefused, match="expired"):
        links.verify_token(conn, _token(url))


@pytest.mark.parametrize("part", [0, 1, 2, 3])
def test_an_altered_link_is_refused(conn: psycopg.Connection[Any], part: int) -> None:
    token = _token(links.create_portal_link(conn, "acme", "1h", "http://x.example"))
    fields = token.split(".")
    other = _token(links.create_portal_link(conn, "globex", "2h", "http://x.example")).split(".")
    fields[part] = other[part]  # another link's id / expiry / tenant / signature
    with pytest.raises(LinkRefused, match="not valid"):
        links.verify_token(conn, ".".join(fields))
    with pytest.raises(LinkRefused, match="not valid"):
        links.verify_token(conn, token[:-2])


def test_revoking_refuses_the_link_and_its_sessions(conn: psycopg.Connection[Any]) -> None:
    url, row = links.create_portal_link_row(conn, "acme", "1h", "http://x.example")
    session = links.verify_token(conn, _token(url))
    cookie = links.new_session(conn, session)
    assert links.verify_session(conn, cookie).tenant == "acme"
    links.revoke_link(conn, str(row["id"]))
    with pytest.raises(LinkRefused, match="revoked"):
        links.verify_token(conn, _token(url))
    with pytest.raises(LinkRefused, match="revoked"):
        links.verify_session(conn, cookie)
    with pytest.raises(NotFound):
        links.revoke_link(conn, str(row["id"]))


def test_revoke_all_of_a_tenant(conn: psycopg.Connection[Any]) -> None:
    a1 = links.create_portal_link(conn, "acme", "1h", "http://x.example")
    a2 = links.create_portal_link(conn, "acme", "1h", "http://x.example")
    g = links.create_portal_link(conn, "globex", "1h", "http://x.example")
    assert links.revoke_tenant(conn, "acme") == 2
    for url in (a1, a2):
        with pytest.raises(LinkRefused):
            links.verify_token(conn, _token(url))
    assert links.verify_token(conn, _token(g)).tenant == "globex"


def test_a_session_cookie_is_not_a_link(conn: psycopg.Connection[Any]) -> None:
    url = links.create_portal_link(conn, "acme", "1h", "http://x.example")
    cookie = links.new_session(conn, links.verify_token(conn, _token(url)))
    with pytest.raises(LinkRefused):
        links.verify_token(conn, cookie)
    with pytest.raises(LinkRefused):
        links.verify_session(conn, _token(url))


@pytest.mark.parametrize(
    ("tenant", "ttl", "base", "field"),
    [
        ("", "1h", None, "tenant"),
        ("acme", "0", None, "ttl"),
        ("acme", "31d", None, "ttl"),
        ("acme", "soon", None, "ttl"),
        ("acme", "1h", "ftp://x", "base_url"),
    ],
)
def test_bad_input_names_the_field_and_records_nothing(
    conn: psycopg.Connection[Any], tenant: str, ttl: str, base: str | None, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        links.create_portal_link(conn, tenant, ttl, base)
    assert caught.value.field == field
    assert conn.execute("SELECT count(*) FROM relay.portal_links").fetchone() == (0,)


def test_cli_prints_lists_and_revokes(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_API_ADDR", "127.0.0.1:9999")
    db = ["--database-url", database_url]
    assert main(["portal-link", *db, "--tenant", "acme", "--ttl", "2h"]) == 0
    out, err = capsys.readouterr()
    url = out.strip()
    assert url.startswith("http://127.0.0.1:9999/portal/enter?token=")
    link_id = err.split("link ")[1].split()[0]
    assert main(["portal-link", "list", *db, "--json"]) == 0
    assert f'"id": "{link_id}"' in capsys.readouterr().out
    assert main(["portal-link", "revoke", *db, link_id]) == 0
    capsys.readouterr()
    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(LinkRefused):
        links.verify_token(conn, _token(url))
    assert main(["portal-link", *db]) == 2
    assert "tenant" in capsys.readouterr().err
    assert main(["portal-link", *db, "--tenant", "acme", "--ttl", "forever"]) == 2
    assert "ttl:" in capsys.readouterr().err
    assert main(["portal-link", "revoke", *db]) == 2
