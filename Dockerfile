# Multi-stage: build a wheel-installed virtualenv, then copy it into a slim runtime image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/herald
COPY pyproject.toml README.md ./
COPY app ./app
COPY jobs ./jobs
COPY admin_ui ./admin_ui
COPY migrations ./migrations
COPY bench ./bench
# Without the `embedded` extra (a PostgreSQL and a Redis for `make run`): production sets
# DATABASE_URL and REDIS_URL.
RUN /opt/herald/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/herald/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HERALD_ENV=production \
    HERALD_HOST=0.0.0.0 \
    HERALD_PORT=8080 \
    HERALD_LOG_FORMAT=json
RUN useradd --system --uid 10001 --home /app herald && mkdir /app && chown herald /app
COPY --from=build /opt/herald /opt/herald
WORKDIR /app
USER herald
EXPOSE 8080
# Workers run from the same image: `herald worker --queues high` (or normal,low).
CMD ["herald", "api"]
