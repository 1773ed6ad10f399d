# Blindmap escrow image. It mirrors the Makefile's install steps (no Docker engine runs
# on the development machines, so this file is kept in step by review, not by CI).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BLINDMAP_ENV=prod \
    BLINDMAP_DATABASE_URL=sqlite:////data/blindmap.db

RUN groupadd --system blindmap && useradd --system --gid blindmap --home /app blindmap \
    && mkdir -p /app /data && chown blindmap:blindmap /data

WORKDIR /app
COPY client/ client/
COPY service/ service/
COPY migrations/ migrations/
COPY pyproject.toml README.md ./
# Same two packages as `make install`, without the dev extra. Editable keeps the
# migrations/ and pyproject.toml beside the code, where `blindmap-server migrate` looks.
RUN pip install -e ./client -e .

USER blindmap
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
# BLINDMAP_SECRET_KEY must be supplied at run time (prod refuses to start without it).
CMD ["sh", "-c", "blindmap-server migrate && exec uvicorn --factory service.main:serve_app --host 0.0.0.0 --port 8000 --proxy-headers"]
