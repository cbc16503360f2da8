# The worker image; `batch` is in it too, so the same image runs the driver.
#
# Builds with no network: the base image is a build argument and every Python package comes from
# wheelhouse/ in the build context, made beforehand on a machine with a package index (CPython 3.11,
# x86_64 glibc Linux, to match the base):
#
#     pip wheel -w wheelhouse '.[s3]' 'setuptools>=68' wheel
#     docker build -t imagebatch .                                  # BASE=python:3.11-slim
#     docker build -t imagebatch --build-arg BASE=imagebatch-base:bookworm .
#
# The base must have python3 with venv (Debian: python3-venv) and, for lossless JPEG rotation,
# libturbojpeg0 (python:3.11-slim lacks it: the worker then re-encodes JPEGs and says so at start-up).
# docs/operations.md, "Container", has the commands and the debootstrap base that CI builds.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# setuptools and wheel from the wheelhouse too: pip's isolated build of /src finds them there.
COPY wheelhouse /wheelhouse
COPY pyproject.toml setup.cfg README.md /src/
COPY batch /src/batch
COPY worker /src/worker
RUN python3 -m venv /opt/imagebatch \
 && /opt/imagebatch/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse '/src[s3]'

# Only the venv goes into the image: no wheelhouse, no source, no build tools.
FROM ${BASE}
COPY --from=build /opt/imagebatch /opt/imagebatch
# A numeric USER lets Kubernetes' runAsNonRoot check it; the passwd entry is for tools that look it up.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp imagebatch
USER 10001:10001
# The root file system may be read-only: nothing is written but to /tmp (a tmpfs or emptyDir, for
# --metrics-port) and to a driver's --out, a volume.
ENV PATH=/opt/imagebatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKER_SERVE_HOST=0.0.0.0
EXPOSE 50051
# Exec form: SIGTERM reaches the worker itself (PID 1), which drains calls in flight for --grace
# seconds and exits 0. Options: arguments after `worker serve`, or WORKER_SERVE_* variables.
CMD ["worker", "serve", "--port", "50051"]
