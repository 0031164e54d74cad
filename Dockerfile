# wsfuse as a container sidecar:
#   docker run --device /dev/fuse --cap-add SYS_ADMIN -e ANYSCALE_ARTIFACT_STORAGE=s3://bucket \
#     -v /mnt/ws:/mnt/ws:rshared -v /mnt/local_storage:/mnt/local_storage wsfuse
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        fuse3 libfuse3-dev pkg-config gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1
# pyfuse3 with the GIL released around read replies (packaging/pyfuse3/build.py says why),
# in its own layer: a change to wsfuse does not rebuild it
COPY packaging/pyfuse3 ./packaging/pyfuse3
RUN pip install --upgrade pip && python packaging/pyfuse3/build.py
COPY pyproject.toml README.md ./
COPY wsfuse ./wsfuse
RUN pip install . \
 && apt-get purge -y gcc pkg-config libfuse3-dev && apt-get autoremove -y \
 && apt-get install -y --no-install-recommends libfuse3-3 && rm -rf /var/lib/apt/lists/*
COPY packaging/mount.fuse.wsfuse /sbin/mount.fuse.wsfuse
# SIGTERM (docker stop) unmounts cleanly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsfuse"]
CMD ["mount", "/mnt/ws", "--foreground"]
