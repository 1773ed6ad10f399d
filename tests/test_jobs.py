"""The job queue's own rules: claiming, retries, lost outcomes handed back."""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy.exc import OperationalError

from service import jobs
from service.models import Job, utcnow


def _job(app, **kw) -> int:
    with app.state.sessionmaker.begin() as s:
        job = Job(
            kind=kw.pop("kind", "test"),
            status=kw.pop("status", "queued"),
            attempts=0,
            run_after=utcnow(),
            created_at=utcnow(),
            **kw,
        )
        s.add(job)
        s.flush()
        return job.id


def test_requeue_own_only_touches_my_running_jobs(app):
    mine = _job(app, status="running", locked_by="w1", locked_at=utcnow())
    theirs = _job(app, status="running", locked_by="w2", locked_at=utcnow())
    jobs.requeue_own(app.state.sessionmaker, "w1", {mine, theirs})
    with app.state.sessionmaker() as s:
        assert s.get(Job, mine).status == "queued" and s.get(Job, mine).locked_by is None
        assert s.get(Job, theirs).status == "running"


def test_an_unrecordable_failure_is_reported_as_lost(app, monkeypatch):
    job_id = _job(app, kind="boom")

    def boom(session, job):
        raise RuntimeError("handler failed")

    monkeypatch.setitem(jobs.HANDLERS, "boom", boom)
    real = app.state.sessionmaker
    calls = {"n": 0}

    class Flaky:
        """The third transaction (recording the failure) finds the database gone."""

        def begin(self):
            calls["n"] += 1
            if calls["n"] == 3:
                return _gone()
            return real.begin()

    @contextlib.contextmanager
    def _gone():
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        yield

    with pytest.raises(jobs.JobLostError) as exc:
        jobs.run_one(Flaky(), app.state.settings, "w1")  # type: ignore[arg-type]
    assert exc.value.job_id == job_id
    with app.state.sessionmaker() as s:
        assert s.get(Job, job_id).status == "running"  # as a dead worker would leave it
    jobs.requeue_own(real, "w1", {job_id})
    with app.state.sessionmaker() as s:
        assert s.get(Job, job_id).status == "queued"


def test_a_partners_match_is_claimed_before_clean_up(app):
    clean_up = _job(app, kind="drop_upload")
    match = _job(app, kind="match")
    with app.state.sessionmaker.begin() as s:
        first = jobs.claim(s, "w", 60)
        assert first is not None and first.id == match
    with app.state.sessionmaker.begin() as s:
        second = jobs.claim(s, "w", 60)
        assert second is not None and second.id == clean_up
