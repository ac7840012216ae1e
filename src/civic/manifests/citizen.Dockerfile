# The citizen image: Python and the standard-library-only CIVIC agent.
# BASE must provide python3. Models that build from source need a C toolchain: unless the base
# has `cc` already, APK_PACKAGES (Alpine) or APT_PACKAGES (Debian) are installed — `civic image
# build` passes a toolchain there by default; `--slim` passes nothing.
ARG BASE=python:3.13-alpine
FROM ${BASE}
ARG APK_PACKAGES=""
ARG APT_PACKAGES=""
ARG VERSION=dev
RUN if command -v cc >/dev/null; then :; \
    elif command -v apk >/dev/null; then \
      if [ -n "$APK_PACKAGES" ]; then apk add --no-cache $APK_PACKAGES; fi; \
    elif [ -n "$APT_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && (adduser -D -H -u 10001 model 2>/dev/null || useradd -M -u 10001 model) \
 && mkdir -p /civic && chmod 0700 /civic
COPY agent/ /opt/civic/
ENV PYTHONPATH=/opt/civic PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/civic
LABEL civic.image=citizen civic.version=${VERSION}
# The agent runs as root with only the capabilities `civic citizen spawn` grants it (CHOWN,
# SETUID, SETGID, KILL) and no new privileges; models run as the unprivileged user 10001 with
# none. Identity and bundle cache live in the /civic volume, closed to models.
WORKDIR /civic
VOLUME /civic
ENTRYPOINT ["python3", "-m", "civic.citizen.agent", "--home", "/civic", "--model-user", "10001"]
