"""The dashboard's actions (POST): each needs a signed-in operator and the form's CSRF token.

Every action, taken or refused, is written to the audit trail (who, what, when, from
where, outcome). An action answers with a redirect to the page it came from and a
one-shot message; bad input answers 400, an unknown run or dead letter 404, both with
one line saying what was wrong and what to do. The work itself is the shared code the
CLI calls: `shared.operations` (trigger, cancel, re-run), `shared.runtime.deliver_signal`
(signal a waiting workflow), `shared.readmodel.schedules` (schedule overrides) and
`shared.readmodel.deadletters` (replay, purge).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from services.dashboard.app import Dashboard, Page, flash_cookie
from services.dashboard.pages import parse_seq
from services.dashboard.security import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Refused,
    Session,
    clear_cookie,
    safe_next,
    session_cookie,
)
from services.dashboard.web import Response, redirect
from shared.audit import Outcome, record_action
from shared.errors import InvalidRequest, SignalRejected
from shared.names import JOBS, check_job_name
from shared.operations import RunAlreadyEnded, RunNotFound, build_request, cancel_run, rerun, trigger_run
from shared.readmodel import deadletters, schedules
from shared.readmodel.runs import find_run
from shared.readmodel.timetext import parse_time
from shared.runtime import deliver_signal
from shared.schedules import parse_schedule

log = logging.getLogger("services.dashboard")


class BadInput(Exception):
    """The form was wrong: 400 with this line."""


class Missing(Exception):
    """The target does not exist: 404 with this line."""


def register(dash: Dashboard) -> None:
    """Add every action's route to `dash`."""
    dash.route("POST", "/login", login)
    dash.route("POST", "/logout", logout)
    dash.route("POST", "/runs/{run_id}/cancel", cancel)
    dash.route("POST", "/runs/{run_id}/rerun", rerun_action)
    dash.route("POST", "/runs/{run_id}/signal", signal)
    dash.route("POST", "/schedules/{job}/set", schedule_set)
    dash.route("POST", "/schedules/{job}/reset", schedule_reset)
    dash.route("POST", "/schedules/{job}/trigger", trigger)
    dash.route("POST", "/schedules/bulk", schedules_bulk)
    dash.route("POST", "/dlq/{seq}/replay", replay_one)
    dash.route("POST", "/dlq/{seq}/purge", purge_one)
    dash.route("POST", "/dlq/replay-all", replay_all)
    dash.route("POST", "/dlq/purge-all", purge_all)


def who(page: Page, session: Session | None) -> str:
    name = session.name if session is not None else "anonymous"
    return f"dashboard:{name}@{page.request.client}"


async def _audit(
    page: Page, who_: str, action: str, target: str, outcome: Outcome, detail: str, params: dict[str, Any]
) -> None:
    if not page.sources.mongo_up:
        log.warning("dashboard.audit_unavailable", extra={"event": "dashboard.audit_unavailable"})
        return
    try:
        await record_action(page.sources.db, who=who_, source="dashboard", action=action, target=target,
                            outcome=outcome, detail=detail, params=params)  # fmt: skip
    except Exception:  # the action's own answer matters more than its audit line; the log keeps it
        log.exception("dashboard.audit_failed", extra={"event": "dashboard.audit_failed"})


Work = Callable[[Session, dict[str, Any]], Awaitable[str]]


async def act(page: Page, action: str, target: str, back: str, work: Work) -> Response:
    """Authorize, run `work` (which returns the message to show), audit, and answer."""
    form = {key: values[0] if len(values) == 1 else values for key, values in (await page.request.form()).items()}
    params = {k: v for k, v in form.items() if k != CSRF_FIELD}
    try:
        session = page.dashboard.guard.authorize(page.session, await page.request.field(CSRF_FIELD))
    except Refused as exc:
        await _audit(page, who(page, page.session), action, target, "refused", str(exc), params)
        return page.error(403, str(exc), back=back)
    actor = who(page, session)
    try:
        message = await work(session, params)
    except (BadInput, InvalidRequest, ValueError) as exc:
        await _audit(page, actor, action, target, "failed", str(exc), params)
        return page.error(400, str(exc), back=back)
    except (RunAlreadyEnded, SignalRejected) as exc:
        await _audit(page, actor, action, target, "failed", str(exc), params)
        return page.error(409, str(exc), back=back)
    except (Missing, RunNotFound, LookupError) as exc:
        await _audit(page, actor, action, target, "failed", str(exc), params)
        return page.error(404, str(exc), back=back)
    except Exception as exc:
        from services.dashboard.app import SERVER_ERRORS

        if not isinstance(exc, SERVER_ERRORS):
            raise
        line = page.dashboard.describe(exc, action)
        await _audit(page, actor, action, target, "failed", line, params)
        return page.render(
            "error.html", status=503, title="Unavailable", heading="Unavailable", message=line, back=back
        )
    await _audit(page, actor, action, target, "done", message, params)
    return redirect(back, cookies=[flash_cookie(message)])


# -- sign in / out -------------------------------------------------------------------------


async def login(page: Page) -> Response:
    token = await page.request.field("token") or ""
    name = await page.request.field("name") or "operator"
    target = safe_next(await page.request.field("next"))
    guard = page.dashboard.guard
    try:
        guard.check_name(name)
        value = guard.sign_in(token, name)
    except (Refused, ValueError) as exc:
        await _audit(
            page, f"dashboard:?@{page.request.client}", "sign_in", "dashboard", "refused", str(exc), {"name": name}
        )
        return page.error(403 if isinstance(exc, Refused) else 400, str(exc), back="/login")
    await _audit(page, f"dashboard:{name}@{page.request.client}", "sign_in", "dashboard", "done", "", {})
    secure = page.request.headers.get("x-forwarded-proto") == "https" or page.request.scope.get("scheme") == "https"
    return redirect(target, cookies=[session_cookie(value, secure=secure), flash_cookie(f"signed in as {name}")])


async def logout(page: Page) -> Response:
    async def work(session: Session, params: dict[str, Any]) -> str:
        return "signed out"

    response = await act(page, "sign_out", "dashboard", "/", work)
    if response.status == 303:
        response.cookies.append(clear_cookie(SESSION_COOKIE))
    return response


# -- runs ----------------------------------------------------------------------------------


def _run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def _job_of(run_id: str) -> str:
    job = run_id.split(":", 1)[0]
    if job not in JOBS:
        raise Missing(f"no run {run_id!r}: a run id starts with its job, one of {', '.join(JOBS)}")
    return job


async def cancel(page: Page) -> Response:
    run_id = page.request.params["run_id"]
    src = page.sources

    async def work(session: Session, params: dict[str, Any]) -> str:
        _job_of(run_id)
        if src.nats is None or not src.nats_up:
            raise_unavailable("NATS")
        assert src.nats is not None
        done = await cancel_run(src.nats, src.js, src.store(), page.settings.names, run_id, by=who(page, session))
        if done.delayed:
            return f"{run_id} canceled: the delayed request was removed before it fired"
        if done.status == "canceled":
            return f"{run_id} canceled"
        return f"{run_id} is {done.status}: cancel requested, it stops at its next check point"

    return await act(page, "cancel", run_id, _run_url(run_id), work)


def raise_unavailable(server: str) -> None:
    from services.dashboard.sources import Unavailable

    raise Unavailable(server)


async def rerun_action(page: Page) -> Response:
    run_id = page.request.params["run_id"]
    src = page.sources
    new_id: list[str] = []

    async def work(session: Session, params: dict[str, Any]) -> str:
        record = await find_run(src.store(), run_id)
        if record is None:
            raise Missing(f"no run {run_id!r} is recorded, so there is nothing to re-run")
        done = await rerun(src.js, src.store(), page.settings.names, record, who(page, session))
        new_id.append(done.run_id)
        return f"re-run of {run_id} started as {done.run_id}"

    response = await act(page, "rerun", run_id, _run_url(run_id), work)
    if new_id and response.status == 303:
        response.headers["location"] = _run_url(new_id[0])
    return response


async def signal(page: Page) -> Response:
    """Send the signal a waiting workflow run waits for (as `pulse signal`), with a JSON payload."""
    run_id = page.request.params["run_id"]
    src = page.sources

    async def work(session: Session, params: dict[str, Any]) -> str:
        try:  # any job may be a workflow: the run's record decides, checked by deliver_signal
            check_job_name(run_id.split(":", 1)[0])
        except ValueError as exc:
            raise Missing(f"{run_id!r} is not a run id ({exc})") from None
        name = str(params.get("name") or "").strip()
        if not name:
            raise BadInput("give the signal's name: the step the run waits on (shown as 'waiting for signal')")
        text = str(params.get("payload") or "").strip()
        try:
            payload = json.loads(text) if text else None
        except ValueError as exc:
            raise BadInput(f'the payload is not JSON ({exc}); e.g. {{"approved": true}}, or leave it empty') from None
        if await find_run(src.store(), run_id) is None:
            raise Missing(f"no run {run_id!r} is recorded, so there is nothing to signal")
        await deliver_signal(src.store(), src.js, page.settings.names, run_id, name, payload,
                             max_bytes=page.settings.step_results_max_bytes)  # fmt: skip
        return f"{run_id}: signal {name} delivered; the run resumes"

    return await act(page, "signal", run_id, _run_url(run_id), work)


# -- schedules -------------------------------------------------------------------------------


def _check_job(job: str) -> str:
    if job not in JOBS:
        raise Missing(f"unknown job {job!r}: expected one of {', '.join(JOBS)}")
    return job


async def schedule_set(page: Page) -> Response:
    job = page.request.params["job"]

    async def work(session: Session, params: dict[str, Any]) -> str:
        _check_job(job)
        text = str(params.get("schedule") or "").strip()
        if not text:
            raise BadInput("give a schedule, e.g. 'every 30s' or 'cron */5 * * * *'")
        try:
            parse_schedule(text)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        _, eff = await schedules.change_override(
            page.sources.js, page.settings, job, schedules.set_schedule(text, who(page, session))
        )
        return f"{job}: schedule set to {eff.schedule.text!r}"

    return await act(page, "schedule_set", job, "/schedules", work)


async def schedule_reset(page: Page) -> Response:
    job = page.request.params["job"]

    async def work(session: Session, params: dict[str, Any]) -> str:
        _check_job(job)
        _, eff = await schedules.change_override(
            page.sources.js, page.settings, job, schedules.reset(who(page, session))
        )
        return f"{job}: back to the default schedule {eff.schedule.text!r}"

    return await act(page, "schedule_reset", job, "/schedules", work)


async def schedules_bulk(page: Page) -> Response:
    async def work(session: Session, params: dict[str, Any]) -> str:
        action = params.get("action")
        jobs = await page.request.fields("jobs")
        if action not in ("pause", "resume"):
            raise BadInput("choose pause or resume")
        if not jobs:
            raise BadInput(f"select at least one job to {action}")
        for job in jobs:
            _check_job(job)
        change = schedules.pause if action == "pause" else schedules.resume
        for job in jobs:
            await schedules.change_override(page.sources.js, page.settings, job, change(who(page, session)))
        return f"{'paused' if action == 'pause' else 'resumed'}: {', '.join(jobs)}"

    form = await page.request.form()
    action = (form.get("action") or ["?"])[0]
    return await act(page, f"schedule_{action}"[:40], ",".join(form.get("jobs", [])) or "-", "/schedules", work)


async def trigger(page: Page) -> Response:
    job = page.request.params["job"]
    src = page.sources

    async def work(session: Session, params: dict[str, Any]) -> str:
        _check_job(job)
        at_text = str(params.get("at") or "").strip()
        at = None
        if at_text and at_text.lower() != "now":
            at = parse_time(at_text, option="at")
            if at <= datetime.now(UTC):
                raise BadInput(f"at {at_text!r} is in the past; to run now, leave it empty")
        args_text = str(params.get("args") or "").strip()
        try:
            args = json.loads(args_text) if args_text else {}
        except ValueError:
            raise BadInput(f'args {args_text[:80]!r} is not JSON: give an object, e.g. {{"limit": 10}}') from None
        if not isinstance(args, dict):
            raise BadInput('args must be a JSON object, e.g. {} or {"limit": 10}')
        request = build_request(job, args, at, None, who(page, session))
        done = await trigger_run(src.js, src.store(), page.settings.names, request, at=at, keyed=False)
        if at is not None:
            return f"{job} will run at {at.isoformat()} as {done.run_id}"
        return f"{job} started as {done.run_id}"

    return await act(page, "trigger", job, "/schedules", work)


# -- dead letters -------------------------------------------------------------------------------


async def replay_one(page: Page) -> Response:
    seq_text = page.request.params["seq"]

    async def work(session: Session, params: dict[str, Any]) -> str:
        seq = parse_seq(seq_text)
        js, names = page.sources.js, page.settings.names
        stored = await deadletters.read_letter(js, names, seq)
        result = await deadletters.replay_letter(
            js, page.sources.store(), names, stored, keep=False, requested_by=who(page, session)
        )
        if not result["replayed"]:
            raise BadInput(f"dead letter #{seq} not replayed: {result['reason']}")
        note = " (already replayed: not started again)" if result["duplicate"] else ""
        return f"dead letter #{seq} replayed as {result['run_id']}{note}"

    return await act(page, "dlq_replay", seq_text, "/dlq", work)


async def purge_one(page: Page) -> Response:
    seq_text = page.request.params["seq"]

    async def work(session: Session, params: dict[str, Any]) -> str:
        seq = parse_seq(seq_text)
        await deadletters.read_letter(page.sources.js, page.settings.names, seq)  # LookupError: 404
        await deadletters.delete_letter(page.sources.js, page.settings.names, seq)
        return f"dead letter #{seq} purged"

    return await act(page, "dlq_purge", seq_text, "/dlq", work)


def _job_filter(params: dict[str, Any]) -> str | None:
    job = str(params.get("job") or "").strip() or None
    try:
        return deadletters.check_job(job)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


async def replay_all(page: Page) -> Response:
    async def work(session: Session, params: dict[str, Any]) -> str:
        job = _job_filter(params)
        js, names = page.sources.js, page.settings.names
        letters = await deadletters.read_letters(js, names, job, deadletters.SCAN_LIMIT)
        results = [
            await deadletters.replay_letter(
                js, page.sources.store(), names, stored, keep=False, requested_by=who(page, session)
            )
            for stored in letters
        ]
        done = sum(1 for r in results if r["replayed"])
        skipped = len(results) - done
        return f"replayed {done} dead letter(s){f' of {job}' if job else ''}" + (
            f"; {skipped} unreadable left in place" if skipped else ""
        )

    return await act(page, "dlq_replay_all", "all", "/dlq", work)


async def purge_all(page: Page) -> Response:
    async def work(session: Session, params: dict[str, Any]) -> str:
        job = _job_filter(params)
        deleted = await deadletters.purge_letters(page.sources.js, page.settings.names, job)
        return f"purged {deleted} dead letter(s){f' of {job}' if job else ''}"

    return await act(page, "dlq_purge_all", "all", "/dlq", work)
