# stream-sync service image.
#   docker build -t stream-sync:latest .
#   docker run --rm -v "$PWD/examples/config.yaml:/etc/stream-sync/config.yaml:ro" -p 8080:8080 stream-sync:latest

# ---- build: install the project and its dependencies into a separate prefix
FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# README.m[d]: copied when present (pyproject names it), no error while it is missing
COPY pyproject.toml README.m[d] ./
COPY stream_sync ./stream_sync
RUN pip install --no-cache-dir --prefix=/install .

# ---- runtime: the installed prefix only, no build tree
FROM python:3.12-slim
LABEL org.opencontainers.image.title="stream-sync" \
      org.opencontainers.image.description="Streaming reverse ETL from Kafka to SaaS tools" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 stream-sync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin stream-sync \
    && mkdir -p /etc/stream-sync
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# /healthz answers 200 while the poll loop is alive (design §8); the slim image has no curl
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8080/healthz', timeout=3)"]
ENTRYPOINT ["stream-sync"]
CMD ["run", "-c", "/etc/stream-sync/config.yaml"]
