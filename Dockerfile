# echo-service: TCP echo (RFC 862) on the Python standard library.
# The base is an ARG so that a machine without a registry can build on a local image:
#   docker build --build-arg PYTHON_IMAGE=localhost/python-base:bookworm -t echo-service .
ARG PYTHON_IMAGE=python:3.13-slim
FROM ${PYTHON_IMAGE}

# `make image` fills these from server/__init__.py and `git remote get-url origin`.
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="echo-service" \
      org.opencontainers.image.description="Production TCP echo service (RFC 862): byte-exact, bounded, observable" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"

# A fixed non-root UID/GID, so volume permissions and policies can name it.
RUN groupadd --system --gid 10001 echo \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin echo

# The product only: two standard-library packages, no build tools, no dependencies.
# Byte-compiled now, as root, because the runtime user cannot write __pycache__.
WORKDIR /app
COPY server ./server
COPY client ./client
RUN python -m compileall -q /app

ENV ECHO_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app

USER 10001:10001
EXPOSE 7007 7008
STOPSIGNAL SIGTERM
# The health check reads the server's flags from /proc/1/cmdline (PID 1 is the server, by
# the exec-form ENTRYPOINT), so `--admin-port 9000` or `--admin-port off` (then it probes
# the echo port) needs nothing more here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "server", "healthcheck"]
ENTRYPOINT ["python", "-m", "server"]
