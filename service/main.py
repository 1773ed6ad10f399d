"""The application factory: `create_app(settings)` wires routers, errors and middleware."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors, logs
from service.api_key.router import router as api_key_router
from service.audit.router import router as audit_router
from service.company.router import router as company_router
from service.config import Settings
from service.db import make_engine, make_sessionmaker, ping
from service.disclosure.router import router as disclosure_router
from service.idempotency import Idempotency
from service.jobs import Worker
from service.middleware import BodyLimit, RequestContext
from service.partnership.router import router as partnership_router
from service.policy.router import router as policy_router
from service.population.router import router as population_router
from service.ratelimit import RateLimit
from service.report.router import router as report_router
from service.upload.router import router as upload_router

log = logging.getLogger("blindmap.service")


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The app; `freeze_gc` (what `blindmap-server serve` uses, see `serve_app`) moves
    the objects alive at startup out of the cyclic garbage collector's reach."""
    settings = settings or Settings()
    logs.configure(settings.log_level)
    engine = make_engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = None
        if settings.embedded_worker:
            worker = Worker(app.state.sessionmaker, settings)
            worker.start()
        app.state.worker = worker
        if freeze_gc:
            # Everything built so far (modules, the app, its routes and models) lives as
            # long as the process: keep the cyclic collector from re-walking it. A full
            # collection otherwise traverses all of it, and a bulk overlaps page allocates
            # enough to trigger them: 75k -> 50k instructions per exported row
            # (docs/reliability.md, Load).
            gc.collect()
            gc.freeze()
        yield
        if worker is not None:
            worker.stop()
        engine.dispose()

    app = FastAPI(
        title="Blindmap escrow",
        version="0.1.0",
        description=(
            "Privacy-preserving account mapping. The escrow stores keyed tokens and "
            "ciphertext only; see docs/protocol.md. Errors are RFC 9457 problem+json. "
            "Every POST accepts an `Idempotency-Key` header (retries replay the first "
            "response); every /v1 response carries `RateLimit`/`RateLimit-Policy` headers "
            "(docs/reliability.md)."
        ),
        lifespan=lifespan,
        responses=errors.PROBLEM_RESPONSES,
    )
    _document_problems(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)

    _install_error_handlers(app)
    # Added innermost first: RequestContext → RateLimit → BodyLimit → Idempotency → app.
    app.add_middleware(
        Idempotency,
        sessionmaker=app.state.sessionmaker,
        secret=settings.hmac_secret,
        ttl_seconds=settings.idempotency_ttl_seconds,
        lock_seconds=settings.idempotency_lock_seconds,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.rate_limit_enabled:  # before the body is read or the database touched
        app.add_middleware(
            RateLimit,
            per_second=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
            delay_seconds=settings.rate_limit_delay_seconds,
        )
    app.add_middleware(RequestContext)  # outermost: ids and logs even on 413

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        responses={503: {"model": errors.Problem, "description": "database unreachable"}},
    )
    def readyz() -> dict[str, str]:
        """Readiness: the database answers."""
        try:
            ping(engine)
        except Exception as exc:
            log.warning("database not ready", extra={"error": type(exc).__name__})
            raise errors.Unavailable("The database is not reachable.") from None
        return {"status": "ready"}

    app.include_router(company_router)
    app.include_router(api_key_router)
    app.include_router(population_router)
    app.include_router(partnership_router)
    app.include_router(policy_router)
    app.include_router(upload_router)
    app.include_router(report_router)
    app.include_router(disclosure_router)
    app.include_router(audit_router)
    return app


def serve_app() -> FastAPI:
    """The factory `blindmap-server serve` gives uvicorn: one app per worker process."""
    return create_app(freeze_gc=True)


def _document_problems(app: FastAPI) -> None:
    """Document the error responses with their real media type, application/problem+json
    (FastAPI puts a response `model` under application/json)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema["paths"].values():
                for operation in item.values():
                    for code, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if code.isdigit() and int(code) >= 400 and "application/json" in content:
                            response["content"] = {errors.PROBLEM_JSON: content["application/json"]}
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _allowed_methods(request: Request, default: str) -> str:
    """Every documented method of this path (Starlette's 405 names one route's only)."""
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), request.url.path):
            return ", ".join(sorted(m.upper() for m in operations))
    return default


def _problem(request: Request, exc: errors.ServiceError) -> JSONResponse:
    # The request id travels in the X-Request-ID header, not the body, so that equal
    # failures (e.g. every 401) have byte-identical bodies.
    body = exc.problem(request.url.path)
    return JSONResponse(
        body, status_code=exc.status, headers=exc.headers, media_type=errors.PROBLEM_JSON
    )


def _field_errors(raw: Any) -> list[dict[str, Any]]:
    out = []
    for err in raw:
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else None
        field = ".".join(loc[1:] if where else loc) or (where or "body")
        message = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            message = f"unknown field '{field}'"
        elif err.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            why = (err.get("ctx") or {}).get("error", message)
            field, message = "body", f"invalid JSON at character {loc[-1]}: {why}"
        out.append(
            {"field": field, "in": where or "body", "message": message, "type": err.get("type")}
        )
    return out


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return _problem(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc.errors())
        names = ", ".join(sorted({f["field"] for f in fields}))
        return _problem(request, errors.Unprocessable(f"Invalid input: {names}", errors=fields))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = errors.BY_STATUS.get(exc.status_code, errors.ServiceError)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
        err = cls(str(exc.detail) if exc.detail else None, headers=headers)
        if cls is errors.ServiceError:
            err.status = exc.status_code
        return _problem(request, err)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    # the hot report reads and the release run on the psycopg connection directly
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.InterfaceError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database went away mid-request (restart, failover). The unit of work rolled
        # back whole, so a retry is safe: 503 + Retry-After, which the SDK retries.
        log.warning(
            "database unavailable",
            extra={
                "request_id": request.scope.get("state", {}).get("request_id"),
                "error": type(exc).__name__,
            },
        )
        return _problem(
            request,
            errors.Unavailable(
                "The database is not reachable right now; retry shortly.",
                headers={"Retry-After": "1"},
            ),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"request_id": request.scope.get("state", {}).get("request_id")},
        )
        return _problem(request, errors.ServiceError("An unexpected error occurred."))
