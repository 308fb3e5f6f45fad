# The grand-challenge container for MIDOG 2025 Track 2 (atypical vs normal mitotic figures).
# process.py reads /input, runs the ONNX ensemble in model/ (or an uploaded one in /opt/ml/model/)
# and writes /output/multiple-mitotic-figure-classification.json (a stack of crops) or
# /output/atypical-mitotic-figures.json (a whole image plus candidate points, cut by crops.py).
#
# Build it with ./build.sh (VARIANT=gpu: onnxruntime-gpu for CUDA 12, requirements.txt) or
# ./build.sh --cpu (VARIANT=cpu: onnxruntime alone, requirements-cpu.txt, no CUDA libraries).
# BASE_IMAGE is an argument so that a machine without Docker Hub can build from a local Debian
# bookworm image (./build.sh --offline); any base with Python 3.11 and the venv module will do.
# When the build context holds wheels in build/wheels/<variant>/, pip installs from them alone
# (--no-index, no network); otherwise it installs from PyPI.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage 1 builds the virtual environment. It is a stage of its own so that the wheels copied in
# (~1.6 GB with the CUDA libraries) never become a layer of the final image.
FROM ${BASE_IMAGE} AS venv
ARG VARIANT=gpu

# The glob makes the wheel folder optional: COPY fails only when no source at all exists, and
# the requirements files always do. Requirements come before the code so that code changes reuse
# this layer.
COPY requirements.txt requirements-cpu.txt build/wheels/${VARIANT}* /tmp/install/
RUN case "${VARIANT}" in \
        gpu) requirements=/tmp/install/requirements.txt ;; \
        cpu) requirements=/tmp/install/requirements-cpu.txt ;; \
        *) echo "VARIANT must be gpu or cpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
    && python3 -m venv /opt/venv \
    && if ls /tmp/install/*.whl >/dev/null 2>&1; then \
           echo "installing ${requirements} from the wheels in the build context (offline)"; \
           /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
               --no-index --find-links /tmp/install -r "${requirements}"; \
       else \
           echo "installing ${requirements} from PyPI"; \
           /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r "${requirements}"; \
       fi \
    && /opt/venv/bin/pip uninstall --yes --quiet setuptools pip \
    && /opt/venv/bin/python -c "import numpy, SimpleITK, tifffile, onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# Stage 2: the image that runs. Same base, so the venv's python symlink resolves the same way.
FROM ${BASE_IMAGE}
ARG VARIANT=gpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
LABEL org.opencontainers.image.title="midog25-atypical" \
      org.opencontainers.image.description="MIDOG 2025 Track 2: atypical vs normal mitotic figures (${VARIANT} build)"

RUN groupadd -r user && useradd -m --no-log-init -r -g user user

# onnxruntime-gpu finds the CUDA 12 / cuDNN 9 libraries of the nvidia-* wheels in the venv itself
# (process.py calls onnxruntime.preload_dlls()), so no LD_LIBRARY_PATH is needed.
COPY --from=venv /opt/venv /opt/venv

WORKDIR /opt/app
COPY process.py /opt/app/
COPY inference/ /opt/app/inference/
# Compiled once here: the container runs with PYTHONDONTWRITEBYTECODE and a read-only file system,
# so without these .pyc files every job would compile the package again (~25 ms of each start).
RUN /opt/venv/bin/python -m compileall -q /opt/app/inference
COPY model/ /opt/app/model/

# A named user as in grand-challenge's algorithm template; its id comes from useradd -r inside the
# image and nothing on the host needs to resolve it, which is all DL3066 warns about.
# hadolint ignore=DL3066
USER user
ENTRYPOINT ["/opt/venv/bin/python", "/opt/app/process.py"]
