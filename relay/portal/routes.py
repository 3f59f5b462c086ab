"""The portal's pages: subscriptions with health, deliveries with attempts, replay.

Handlers are plain ``def``: relay.admin is synchronous psycopg, so FastAPI runs them in its
thread pool with a pooled connection each. Every POST depends on :data:`web.Posted` (session
plus CSRF token) and answers with a redirect to a page (post/redirect/get), except where a
generated secret must be shown once: that page is rendered directly and never cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from relay import admin
from relay.admin import validation as v
from relay.errors import NotFound, ValidationError
from relay.portal import data, links, preview
from relay.portal.web import (
    STATIC_DIR,
    Connection,
    Ctx,
    Posted,
    SignedIn,
    error_page,
    render,
    set_session_cookie,
)

STATIC_FILES = {"portal.css": "text/css", "htmx.min.js": "text/javascript"}
# Outcome banners after a redirect: fixed texts chosen by key, never text from the URL.
NOTICES = {
    "created": "Subscription created.",
    "updated": "Subscription saved.",
    "enabled": "Subscription enabled: waiting deliveries are due now.",
    "disabled": "Subscription disabled: deliveries wait until it is enabled again.",
    "removed": "Subscription removed; its waiting deliveries ended dead.",
    "replayed": "Replay scheduled: the delivery will be sent again shortly.",
    "replayed-dead": "Dead deliveries scheduled for another try.",
    "nothing-dead": "There were no dead deliveries to replay.",
}
SUB_ACTIONS = ("enable", "disable", "remove", "rotate", "replay-dead")


@dataclass
class SubForm:
    """The subscription form as posted (all text: validation is relay.admin's)."""

    url: str = ""
    method: str = "POST"
    events: list[str] = field(default_factory=list)
    headers: str = ""
    clear_headers: list[str] = field(default_factory=list)
    body_map: str = ""
    signed: bool = True
    max_retries: str = "3"
    backoff_ms: str = "5000"
    timeout_ms: str = "10000"
    ordered: bool = False
    sample_event: str = ""


def sub_form(
    url: Annotated[str, Form()] = "",
    method: Annotated[str, Form()] = "POST",
    events: Annotated[list[str] | None, Form()] = None,
    headers: Annotated[str, Form()] = "",
    clear_headers: Annotated[list[str] | None, Form()] = None,
    body_map: Annotated[str, Form()] = "",
    signed: Annotated[str, Form()] = "",
    max_retries: Annotated[str, Form()] = "3",
    backoff_ms: Annotated[str, Form()] = "5000",
    timeout_ms: Annotated[str, Form()] = "10000",
    ordered: Annotated[str, Form()] = "",
    sample_event: Annotated[str, Form()] = "",
) -> SubForm:
    return SubForm(
        url=url.strip(),
        method=method,
        events=events or [],
        headers=headers,
        clear_headers=clear_headers or [],
        body_map=body_map,
        signed=bool(signed),
        max_retries=max_retries,
        backoff_ms=backoff_ms,
        timeout_ms=timeout_ms,
        ordered=bool(ordered),
        sample_event=sample_event,
    )


PostedForm = Annotated[SubForm, Depends(sub_form)]


def _parse_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            name, value = v.parse_header(line)
            headers[name] = value
    return headers


def _changes(form: SubForm, current: dict[str, Any] | None) -> admin.SubscriptionChanges:
    """The form as relay.admin changes; for an edit, empty fields clear what is stored."""
    headers = _parse_headers(form.headers)
    changes = admin.SubscriptionChanges(
        url=form.url,
        method=form.method,
        headers=headers or None,
        events=form.events or None,
        body_map=form.body_map if form.body_map.strip() else None,
        max_retries=form.max_retries,
        backoff_ms=form.backoff_ms,
        timeout_ms=form.timeout_ms,
        ordered=form.ordered,  # an unticked box on an edit: unordered
    )
    if current is None:
        changes.secret = admin.GENERATE if form.signed else None
        return changes
    changes.clear_headers = [n for n in form.clear_headers if n in current["headers"]]
    changes.clear_events = not form.events and bool(current["events"])
    changes.clear_body_map = changes.body_map is None and current["body_map"] is not None
    return changes


def _form_of(row: dict[str, Any]) -> SubForm:
    return SubForm(
        url=row["url"],
        method=row["method"],
        events=list(row["events"]),
        body_map=data.body_map_text(row),
        signed=row["secret"] is not None,
        max_retries=str(row["max_retries"]),
        backoff_ms=str(row["backoff_ms"]),
        timeout_ms=str(row["timeout_ms"]),
        ordered=bool(row["ordered"]),
    )


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _notice(done: str | None) -> str | None:
    return NOTICES.get(done or "")


def add_routes(router: APIRouter) -> None:
    """Register the portal's pages on ``router`` (prefix ``/portal``)."""

    @router.get("/portal/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound(name)
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    @router.get("/portal/enter", response_class=HTMLResponse)
    def enter(request: Request, conn: Connection, token: str = "") -> Response:
        if not token:
            raise links.LinkRefused("This link is incomplete: it has no token.")
        link = links.verify_token(conn, token)
        response = render(request, "entered.html", tenant=link.tenant)
        max_age = link.expires - int(datetime.now().timestamp())
        set_session_cookie(request, response, links.new_session(conn, link), max_age)
        return response

    @router.post("/portal/logout")
    def logout(request: Request, ctx: Posted) -> Response:
        response = error_page(request, 200, "Signed out", "You have left the portal.")
        response.delete_cookie("relay_portal", path="/portal")
        return response

    @router.get("/portal/", response_class=HTMLResponse)
    def home(request: Request, ctx: SignedIn, done: str | None = None) -> Response:
        subs = data.list_subscriptions(ctx.conn, ctx.tenant)
        return render(request, "home.html", ctx=ctx, subs=subs, notice=_notice(done))

    @router.get("/portal/subscriptions/new", response_class=HTMLResponse)
    def new_subscription(request: Request, ctx: SignedIn) -> Response:
        return _form_page(request, ctx, SubForm(), None, None)

    def _form_page(
        request: Request,
        ctx: Ctx,
        form: SubForm,
        row: dict[str, Any] | None,
        error: ValidationError | None,
    ) -> Response:
        catalog = data.event_types(ctx.conn)
        sample = form.sample_event or (form.events[0] if form.events else catalog[0]["name"])
        return render(
            request,
            "subscription_form.html",
            400 if error else 200,
            ctx=ctx,
            form=form,
            sub=row,
            catalog=catalog,
            sample=sample if "*" not in sample else catalog[0]["name"],
            error=error,
        )

    @router.post("/portal/subscriptions", response_class=HTMLResponse)
    def create_subscription(request: Request, ctx: Posted, form: PostedForm) -> Response:
        try:
            result = data.add_subscription(ctx.conn, ctx.tenant, _changes(form, None))
        except ValidationError as exc:
            return _form_page(request, ctx, form, None, exc)
        if result.generated_secret is None:
            return _see_other(f"/portal/subscriptions/{result.id}?done=created")
        return render(
            request,
            "secret.html",
            ctx=ctx,
            sub_id=result.id,
            secret=result.generated_secret,
            created=True,
        )

    @router.post("/portal/preview", response_class=HTMLResponse)
    def body_preview(request: Request, ctx: Posted, form: PostedForm) -> Response:
        sample = form.sample_event or (form.events[0] if form.events else "order.created")
        try:
            out = preview.preview(form.method, sample, form.body_map)
        except ValidationError as exc:
            return render(request, "_preview.html", preview=None, error=exc, sample=sample)
        return render(request, "_preview.html", preview=out, error=None, sample=sample)

    @router.get("/portal/subscriptions/{sub_id}", response_class=HTMLResponse)
    def subscription(
        request: Request, ctx: SignedIn, sub_id: int, done: str | None = None
    ) -> Response:
        row = data.get_subscription(ctx.conn, ctx.tenant, sub_id)
        recent = data.list_deliveries(ctx.conn, ctx.tenant, subscription_id=sub_id, limit=10)
        return render(
            request, "subscription.html", ctx=ctx, sub=row, recent=recent, notice=_notice(done)
        )

    @router.get("/portal/subscriptions/{sub_id}/edit", response_class=HTMLResponse)
    def edit_subscription(request: Request, ctx: SignedIn, sub_id: int) -> Response:
        row = data.get_subscription(ctx.conn, ctx.tenant, sub_id)
        return _form_page(request, ctx, _form_of(row), row, None)

    @router.post("/portal/subscriptions/{sub_id}", response_class=HTMLResponse)
    def save_subscription(request: Request, ctx: Posted, sub_id: int, form: PostedForm) -> Response:
        row = data.get_subscription(ctx.conn, ctx.tenant, sub_id)
        try:
            data.update_subscription(ctx.conn, ctx.tenant, sub_id, _changes(form, row))
        except ValidationError as exc:
            return _form_page(request, ctx, form, row, exc)
        return _see_other(f"/portal/subscriptions/{sub_id}?done=updated")

    @router.post("/portal/subscriptions/{sub_id}/{action}", response_class=HTMLResponse)
    def subscription_action(request: Request, ctx: Posted, sub_id: int, action: str) -> Response:
        if action not in SUB_ACTIONS:
            raise NotFound(action)
        if action in ("enable", "disable"):
            data.set_enabled(ctx.conn, ctx.tenant, sub_id, action == "enable")
            return _see_other(f"/portal/subscriptions/{sub_id}?done={action}d")
        if action == "remove":
            data.remove_subscription(ctx.conn, ctx.tenant, sub_id)
            return _see_other("/portal/?done=removed")
        if action == "rotate":
            secret = data.rotate_secret(ctx.conn, ctx.tenant, sub_id)
            return render(
                request, "secret.html", ctx=ctx, sub_id=sub_id, secret=secret, created=False
            )
        count = data.replay_dead(ctx.conn, ctx.tenant, sub_id)
        return _see_other(
            f"/portal/subscriptions/{sub_id}?done={'replayed-dead' if count else 'nothing-dead'}"
        )

    @router.get("/portal/deliveries", response_class=HTMLResponse)
    def deliveries(
        request: Request,
        ctx: SignedIn,
        status: str = "",
        event_type: str = "",
        subscription: str = "",
        since: str = "",
        before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=data.MAX_PAGE_SIZE)] = data.PAGE_SIZE,
    ) -> Response:
        filters = {
            "status": status,
            "event_type": event_type,
            "subscription": subscription,
            "since": since,
        }
        error: ValidationError | None = None
        rows: list[dict[str, Any]] = []
        try:
            sub_id = v.parse_id(subscription, "subscription") if subscription else None
            when = v.parse_since(since, datetime.now().astimezone()) if since else None
            rows = data.list_deliveries(
                ctx.conn,
                ctx.tenant,
                status=status or None,
                event_type=event_type or None,
                subscription_id=sub_id,
                since=when,
                before=before,
                limit=limit,
            )
        except ValidationError as exc:
            error = exc
        return render(
            request,
            "deliveries.html",
            400 if error else 200,
            ctx=ctx,
            rows=rows,
            filters=filters,
            error=error,
            limit=limit,
            first_page=before is None,
            catalog=data.event_types(ctx.conn),
            subs=data.list_subscriptions(ctx.conn, ctx.tenant),
            statuses=admin.STATUSES,
        )

    @router.get("/portal/deliveries/{delivery_id}", response_class=HTMLResponse)
    def delivery(
        request: Request, ctx: SignedIn, delivery_id: int, done: str | None = None
    ) -> Response:
        row = data.get_delivery(ctx.conn, ctx.tenant, delivery_id)
        attempts = row["attempt_history"]
        sent = preview.request_as_sent(row, attempts[-1]["started_at"] if attempts else None)
        return render(
            request,
            "delivery.html",
            ctx=ctx,
            d=row,
            attempts=attempts,
            sent=sent,
            notice=_notice(done),
        )

    @router.post("/portal/deliveries/{delivery_id}/replay", response_class=HTMLResponse)
    def replay(request: Request, ctx: Posted, delivery_id: int) -> Response:
        try:
            data.replay(ctx.conn, ctx.tenant, [delivery_id])
        except ValidationError as exc:
            return error_page(request, 400, "Cannot replay", str(exc))
        return _see_other(f"/portal/deliveries/{delivery_id}?done=replayed")
