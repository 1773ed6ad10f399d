"""A job table and its workers: an embedded thread by default, or `blindmap-server worker`.

Claiming is one short transaction: PostgreSQL uses `FOR UPDATE SKIP LOCKED` so several
worker processes never take the same job; SQLite serialises writers anyway. A job whose
worker died (still `running` after the lease) is claimed again. Failures retry with
exponential backoff up to `job_max_attempts`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, case, event, or_, select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.models import Job, utcnow

log = logging.getLogger("blindmap.jobs")

Handler = Callable[[Session, Job], None]
HANDLERS: dict[str, Handler] = {}
_wakers: weakref.WeakSet[threading.Event] = weakref.WeakSet()


# Clean-up (freeing a replaced list's rows) waits behind every other due job: a partner's
# match job, which users wait for, never queues behind a delete nobody waits for.
_LATER_KINDS = ("drop_upload",)


def load_handlers() -> None:
    """Import the modules whose handlers the queue runs (idempotent): match, drop_upload."""
    import service.overlap.service
    import service.upload.service  # noqa: F401


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def enqueue(
    session: Session,
    kind: str,
    *,
    partnership_id: uuid.UUID | None = None,
    upload_num: int | None = None,
) -> Job:
    job = Job(
        kind=kind,
        partnership_id=partnership_id,
        upload_num=upload_num,
        status="queued",
        attempts=0,
        run_after=utcnow(),
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    # Wake in-process workers once the job is visible, not before.
    event.listen(session, "after_commit", lambda _s: _wake_all(), once=True)
    return job


def _wake_all() -> None:
    for ev in list(_wakers):
        ev.set()


def claim(session: Session, worker_id: str, lease_seconds: int) -> Job | None:
    now = utcnow()
    stmt = (
        select(Job)
        .where(
            or_(
                and_(Job.status == "queued", Job.run_after <= now),
                and_(
                    Job.status == "running", Job.locked_at < now - timedelta(seconds=lease_seconds)
                ),
            )
        )
        .order_by(case((Job.kind.in_(_LATER_KINDS), 1), else_=0), Job.run_after, Job.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    job = session.execute(stmt).scalar_one_or_none()
    if job is None:
        return None
    job.status, job.locked_by, job.locked_at = "running", worker_id, now
    job.attempts += 1
    session.flush()
    return job


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(300, 2**attempts))


def run_one(factory: sessionmaker[Session], settings: Settings, worker_id: str) -> bool:
    """Claim and run one job; False when there was nothing to do."""
    with factory.begin() as session:
        job = claim(session, worker_id, settings.job_lease_seconds)
        if job is None:
            return False
        job_id, kind = job.id, job.kind
    try:
        with factory.begin() as session:
            job = session.get_one(Job, job_id)
            fn = HANDLERS.get(kind)
            if fn is None:
                raise RuntimeError(f"no handler for job kind {kind!r}")
            fn(session, job)
            job.status, job.finished_at, job.error = "done", utcnow(), None
    except Exception as exc:  # the job's own transaction rolled back; record the failure
        log.warning(
            "job failed", extra={"job_id": job_id, "kind": kind, "error": type(exc).__name__}
        )
        try:
            with factory.begin() as session:
                job = session.get_one(Job, job_id)
                job.error = f"{type(exc).__name__}: {exc}"[:2000]
                if job.attempts >= settings.job_max_attempts:
                    job.status, job.finished_at = "failed", utcnow()
                else:
                    job.status, job.run_after = "queued", utcnow() + _backoff(job.attempts)
                job.locked_by = job.locked_at = None
        except Exception as lost:  # the database itself is gone: hand the job back later
            raise JobLostError(job_id) from lost
    return True


class JobLostError(RuntimeError):
    """A job's outcome could not be recorded (the database went away); the worker
    re-queues it as soon as the database answers, instead of waiting for the lease."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} could not be recorded")
        self.job_id = job_id


def requeue_own(factory: sessionmaker[Session], worker: str, job_ids: set[int]) -> None:
    """Put jobs this worker was running back in the queue (they rolled back)."""
    with factory.begin() as session:
        for job_id in job_ids:
            job = session.get(Job, job_id)
            if job is not None and job.status == "running" and job.locked_by == worker:
                job.status, job.locked_by, job.locked_at = "queued", None, None
                job.run_after = utcnow()


def drain(factory: sessionmaker[Session], settings: Settings, worker_id: str = "drain") -> int:
    """Run jobs until none is ready (tests and the demo use it to wait for matching)."""
    load_handlers()
    n = 0
    while run_one(factory, settings, worker_id):
        n += 1
    return n


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Worker:
    """Runs jobs in a thread until stopped; also reaps stale staged uploads."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory, self.settings = factory, settings
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="blindmap-worker", daemon=True)
        self.id = worker_id()
        _wakers.add(self.wake)
        load_handlers()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout)

    def _loop(self) -> None:
        from service.upload import service as uploads

        last_reap = 0.0
        lost: set[int] = set()
        while not self.stopping.is_set():
            try:
                if lost:
                    requeue_own(self.factory, self.id, lost)
                    lost.clear()
                busy = run_one(self.factory, self.settings, self.id)
                now = _monotonic()
                if now - last_reap > 60:
                    last_reap = now
                    with self.factory.begin() as session:
                        uploads.reap(session, self.settings)
            except JobLostError as exc:
                lost.add(exc.job_id)
                log.warning("job outcome lost; will re-queue", extra={"job_id": exc.job_id})
                busy = False
                self.stopping.wait(2.0)
            except Exception:  # the database may be restarting: back off and retry
                log.exception("worker loop error")
                busy = False
                self.stopping.wait(2.0)
            if not busy:
                self.wake.wait(self.settings.worker_poll_seconds)
                self.wake.clear()


def _monotonic() -> float:
    import time

    return time.monotonic()
