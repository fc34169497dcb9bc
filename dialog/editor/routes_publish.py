"""Publish (admins) and gap suggestions: the editor's side of hot publish and of LM-drafted replies.

"Publish" sends ``repliq.v1.Admin/Publish`` to the gRPC server named by ``[server] host``/``port`` of the
editor's configuration, authenticated with the workspace's ``admin.token`` (dialog/serving/admin.py). The
server builds the index snapshot, verifies it and swaps it in; the page shows the versions before and
after, or the server's reason for refusing. Every attempt is recorded in the audit table.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from dialog.editor import auth
from dialog.editor.gaps import REPORT_FILE, SOURCE, read_report
from dialog.editor.pages import render

router = APIRouter()
PUBLISH_ACTION = "publish"
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def publish_target(request: Request) -> tuple[str, int] | None:
    settings = request.app.state.settings
    if settings is None:
        return None
    host = settings.server.host
    return ("127.0.0.1" if host in _ANY_ADDRESS else host), settings.server.port


def _publishes(request: Request) -> list[tuple[str, str, str, str, str]]:
    return [row for row in auth.users(request).audit(200) if row[2] == PUBLISH_ACTION][:20]


def _page(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    target = publish_target(request)
    bank = request.app.state.bank
    return render(request, "publish.html", {"target": f"{target[0]}:{target[1]}" if target else "", "result": None,
                                            "error": "", "revision": bank.revision, "history": _publishes(request),
                                            **context}, status_code)


@router.get("/publish")
def publish_page(request: Request) -> Response:
    auth.require(request, "admin")
    return _page(request, {})


def _publish(request: Request, who: str) -> Any:
    from dialog.serving.admin_client import AdminClient

    settings = request.app.state.settings
    if settings.server.tls_cert:
        raise ValueError("the gRPC port speaks TLS ([server] tls_cert), and the editor's publish connects in "
                         "plaintext; publish from the server host or serve the admin port without TLS on loopback")
    host, port = publish_target(request)  # type: ignore[misc]
    client = AdminClient.for_workspace(host, port, settings.home)
    try:
        return client.publish(who)
    finally:
        client.close()


@router.post("/publish")
async def publish(request: Request) -> Response:
    session, _form = await auth.require_form(request, "admin")
    if publish_target(request) is None:
        return _page(request, {"error": "the editor was started without a workspace configuration, so it does "
                                        "not know which server to publish to"}, 503)
    from dialog.serving.admin_client import PublishError

    who = session.user.name
    try:
        result = await run_in_threadpool(_publish, request, who)
    except (PublishError, OSError, ValueError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        auth.users(request).record(who, PUBLISH_ACTION, "refused", f"{code}: {exc}")
        return _page(request, {"error": f"publish failed ({code}): {exc}"}, 502)
    detail = (f"bank {result.before.bank} -> {result.after.bank}, index {result.before.index} -> "
              f"{result.after.index}; +{result.added} ~{result.edited} -{result.removed}; {result.phrases} phrases")
    auth.users(request).record(who, PUBLISH_ACTION, "live" if result.changed else "unchanged", detail)
    return _page(request, {"result": result})


@router.get("/gaps")
def gaps_page(request: Request) -> Response:
    auth.require(request, "viewer")
    bank = request.app.state.bank
    settings = request.app.state.settings
    report = read_report(settings.home / REPORT_FILE) if settings is not None else None
    waiting, total = bank.search(source=SOURCE, status="draft", limit=100)
    statuses: dict[int, str] = {}
    for gap in report["gaps"] if report else []:
        for draft in gap.get("drafts", []):
            try:
                statuses[int(draft["id"])] = bank.get(int(draft["id"])).status
            except (KeyError, ValueError, TypeError):
                statuses[int(draft.get("id", 0) or 0)] = "deleted"
    return render(request, "gaps.html", {"report": report, "waiting": waiting, "total": total, "statuses": statuses})
