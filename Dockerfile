# Base images come from build args, so a registry mirror or an offline stand-in
# (scripts/images/) can replace them; the defaults are the public images.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
# Dependencies get their own layer before the code: a code-only change reuses it.
COPY requirements.txt /tmp/requirements.txt
# pip (and the setuptools that Python < 3.12 adds to a venv) go once the dependencies are
# in: the runtime never installs anything.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       -r /tmp/requirements.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${PYTHON_IMAGE}
# The app has no default database: the image's is SQLite in its data/, for `docker run`
# alone. Compose sets DATABASE_URL; to use DATABASE_URL_FILE, also set DATABASE_URL= (empty).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////opt/hello-app/data/app.sqlite3
# Fixed UID/GID so volume ownership and the compose hardening do not depend on the base image.
# data/ holds that SQLite file, so the app may write there; the code itself stays root-owned.
RUN groupadd --system --gid 10001 hello-app \
    && useradd --system --uid 10001 --gid hello-app --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hello-app \
    && install -d -o hello-app -g hello-app /opt/hello-app/data
COPY --from=build /opt/venv /opt/venv
COPY app /opt/hello-app/app
# `python -m app` imports the package from the working directory.
WORKDIR /opt/hello-app
USER 10001:10001
EXPOSE 8080
# slim has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8080\")}/healthz', timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself, then exits 0 after a graceful stop.
CMD ["python", "-m", "app"]
