"""The portal in a real browser (Playwright driving Debian's chromium) against the live
portal app, a real `relay run` subprocess and a local aiohttp receiver.

Screenshots go to the test's tmp dir; with RELAY_PORTAL_SCREENSHOTS=docs/portal they also
refresh the ones the README shows.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.conftest import relay_process, wait_for
from tests.portal.conftest import PortalServer
from tests.receiver import Behaviour, Receiver, respond
from tests.relayctx import emit

pytestmark = pytest.mark.acceptance
__all__ = ["relay_process"]  # the fixture, shared with the acceptance tier

XSS_SCRIPT = "<script>window.__pwned=1</script>"
XSS_IMG = '"><img/src=x/onerror=window.__pwned=1>'  # no spaces: valid in a URL too

# Every form control needs a name a screen reader can say: a <label>, or aria-label(ledby).
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML)"""


class ThreadReceiver:
    """tests.receiver.Receiver on its own event loop thread (the browser API is sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rx = Receiver()
        asyncio.run_coroutine_threadsafe(self.rx.start(), self.loop).result(10)

    def url(self, path: str) -> str:
        return self.rx.url(path)

    def script(self, path: str, behaviours: list[Behaviour]) -> None:
        self.loop.call_soon_threadsafe(self.rx.script, path, behaviours)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.rx.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def receiver_thread() -> Iterator[ThreadReceiver]:
    rx = ThreadReceiver()
    yield rx
    rx.close()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    target = os.environ.get("RELAY_PORTAL_SCREENSHOTS")
    if target:
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def _check_page(page: Any) -> None:
    assert page.evaluate(UNLABELLED) == [], page.url
    assert page.evaluate("window.__pwned") is None, "an injected script ran"


def _status_of(conn: psycopg.Connection[Any], delivery_id: int) -> str:
    row = conn.execute(
        "SELECT status FROM relay.deliveries WHERE id = %s", (delivery_id,)
    ).fetchone()
    return "" if row is None else str(row[0])


def test_a_tenant_manages_its_webhooks_in_a_browser(
    portal: PortalServer,
    database_url: str,
    conn: psycopg.Connection[Any],
    receiver_thread: ThreadReceiver,
    relay_process: Any,
    browser: Any,
    page: Any,
    tmp_path: Path,
) -> None:
    relay_process(database_url)
    rx = receiver_thread
    hook = rx.url("/hook") + "?tag=" + XSS_IMG  # a script smuggled in through the URL
    # First attempt fails with a hostile response body, the retry succeeds.
    rx.script("/hook", [respond(500, XSS_SCRIPT), respond(204)])

    page.goto(portal.link("acme"))
    page.wait_for_url("**/portal/")
    assert "token=" not in page.url
    assert page.get_by_text("No subscriptions yet").is_visible()
    _check_page(page)

    # Create: a bad header name is refused naming the field, shown as text.
    page.get_by_role("link", name="New subscription").click()
    _check_page(page)
    page.fill("#url", hook)
    page.get_by_label("order.created").check()
    page.fill("#headers", XSS_SCRIPT + ": x")
    page.get_by_role("button", name="Create subscription").click()
    assert page.get_by_role("alert").inner_text().startswith("header:")
    assert "<script>window.__pwned=1</script>" in page.get_by_role("alert").inner_text()
    _check_page(page)
    page.fill("#headers", "Authorization: Bearer t0ps3cret")
    page.fill("#body_map", '{"type": "$.eventType", "order": "$.orderId", "note": "$.note"}')
    page.locator("summary", has_text="Retries and timeout").click()
    page.fill("#max_retries", "1")
    page.fill("#backoff_ms", "300")
    # The live preview follows the body map.
    page.locator("#preview", has_text='"order": "ord_1001"').wait_for()
    _check_page(page)
    _shot(page, tmp_path, "new-subscription")
    page.get_by_role("button", name="Create subscription").click()
    assert page.get_by_role("alert").count() == 0, page.get_by_role("alert").inner_text()
    secret = page.get_by_label("Signing secret").input_value()
    assert secret.startswith("whsec_")
    page.get_by_role("link", name="I have stored it").click()
    sub_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    assert secret not in page.content() and "t0ps3cret" not in page.content()

    # An event: fails once (500), then succeeds; both attempts visible.
    emit(conn, "order.created", {"orderId": "o-1", "note": XSS_SCRIPT + XSS_IMG}, "acme")
    row = None

    def delivered() -> bool:
        nonlocal row
        row = conn.execute(
            "SELECT id FROM relay.deliveries WHERE status = 'delivered' AND subscription_id = %s",
            (sub_id,),
        ).fetchone()
        return row is not None

    wait_for(delivered, 30, "the delivery to succeed on its retry")
    assert row is not None
    first_id = int(row[0])
    page.get_by_role("link", name="Deliveries", exact=True).click()
    page.get_by_role("link", name=f"#{first_id}").click()
    attempts = page.locator("table.attempts tbody tr")
    assert attempts.count() == 2
    assert "HTTP 500" in attempts.nth(0).inner_text()
    assert XSS_SCRIPT in attempts.nth(0).inner_text()  # the response body, as text
    assert "HTTP 204" in attempts.nth(1).inner_text()
    request_text = page.locator("pre.request").inner_text()
    assert "Authorization: ***" in request_text and "webhook-signature: v1,***" in request_text
    assert XSS_SCRIPT in request_text and "t0ps3cret" not in request_text
    _check_page(page)
    _shot(page, tmp_path, "delivery")

    # A dead one (both attempts fail), replayed from its page once the endpoint is back.
    rx.script("/hook", [respond(503), respond(503), respond(204), respond(204)])
    emit(conn, "order.created", {"orderId": "o-2"}, "acme")
    wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'dead'").fetchone()
            == (1,)
        ),
        30,
        "the second delivery to die",
    )
    page.goto(portal.base_url + "/portal/deliveries?status=dead")
    dead_link = page.locator("table.rows a").first
    dead_id = int(dead_link.inner_text().lstrip("#"))
    _shot(page, tmp_path, "deliveries")
    dead_link.click()
    page.get_by_role("button", name="Replay").click()
    assert "Replay scheduled" in page.get_by_role("status").inner_text()
    wait_for(lambda: _status_of(conn, dead_id) == "delivered", 30, "the replay to succeed")
    page.reload()
    assert "HTTP 204" in page.locator("table.attempts tbody tr").nth(2).inner_text()

    # Replay every dead one of the subscription.
    rx.script("/hook", [respond(500), respond(500), respond(204)])
    emit(conn, "order.created", {"orderId": "o-3"}, "acme")
    wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'dead'").fetchone()
            == (1,)
        ),
        30,
        "the third delivery to die",
    )
    page.goto(f"{portal.base_url}/portal/subscriptions/{sub_id}")
    page.get_by_role("button", name="Replay dead deliveries").click()
    assert "scheduled for another try" in page.get_by_role("status").inner_text()
    wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'dead'").fetchone()
            == (0,)
        ),
        30,
        "replay of the dead deliveries",
    )
    page.goto(portal.base_url + "/portal/")
    assert XSS_IMG in page.locator(".sub-url").inner_text()  # the URL, shown as text
    _check_page(page)
    _shot(page, tmp_path, "subscriptions")
    page.goto(f"{portal.base_url}/portal/subscriptions/{sub_id}")
    _shot(page, tmp_path, "subscription")

    # Phone-sized screen: nothing wider than the viewport.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    mobile = phone.new_page()
    mobile.goto(portal.link("acme"))
    mobile.wait_for_url("**/portal/")
    for path in ("/portal/", f"/portal/deliveries/{first_id}", "/portal/subscriptions/new"):
        mobile.goto(portal.base_url + path)
        overflow = mobile.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
    mobile.goto(portal.base_url + "/portal/")
    _shot(mobile, tmp_path, "phone")
    phone.close()

    # A second tenant's link sees none of it.
    other = browser.new_context()
    globex = other.new_page()
    globex.goto(portal.link("globex"))
    globex.wait_for_url("**/portal/")
    assert globex.get_by_text("No subscriptions yet").is_visible()
    globex.goto(portal.base_url + "/portal/deliveries")
    assert globex.locator("table.rows a").count() == 0
    for path in (f"/portal/subscriptions/{sub_id}", f"/portal/deliveries/{first_id}"):
        response = globex.goto(portal.base_url + path)
        assert response is not None and response.status == 404
    other.close()


def test_refused_links_show_a_clear_page(portal: PortalServer, page: Any) -> None:
    link = portal.link("acme")
    response = page.goto(link[:-4] + "AAAA")
    assert response is not None and response.status == 403
    assert "not valid" in page.get_by_role("paragraph").inner_text()
    response = page.goto(portal.base_url + "/portal/")
    assert response is not None and response.status == 403
    assert "not signed in" in page.content()
