# The server image: CIVIC in a virtual environment, running `civic server run`.
# BASE must provide python3 with venv. Dependencies come from PyPI, or from the wheels in
# wheels/ when the build context has any (offline builds, tests). `civic` is on the PATH, so
# `docker exec -it civic-server civic server console` opens the console in the container.
# 24844: the dashboard and /metrics, when `server install` runs it with --web (the default).
ARG BASE=python:3.13-slim
FROM ${BASE}
ARG VERSION=dev
COPY requirements.txt /build/requirements.txt
COPY wheels/ /build/wheels/
RUN python3 -m venv /opt/civic \
 && if ls /build/wheels/*.whl >/dev/null 2>&1; then \
      /opt/civic/bin/pip install --no-cache-dir --no-index --find-links /build/wheels \
        -r /build/requirements.txt; \
    else /opt/civic/bin/pip install --no-cache-dir -r /build/requirements.txt; fi \
 && rm -rf /build \
 && printf '#!/bin/sh\nexec /opt/civic/bin/python -m civic "$@"\n' > /usr/local/bin/civic \
 && chmod 755 /usr/local/bin/civic \
 && (adduser -D -H -u 10002 civic 2>/dev/null || useradd -M -u 10002 civic)
COPY civic/ /opt/civic/src/civic/
ENV PYTHONPATH=/opt/civic/src PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CIVIC_HOME=/tmp/civic
LABEL civic.image=server civic.version=${VERSION}
USER 10002
EXPOSE 24842 24844
ENTRYPOINT ["/opt/civic/bin/python", "-m", "civic"]
CMD ["server", "run", "--host", "0.0.0.0"]
