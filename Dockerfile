# syntax=docker/dockerfile:1
# CPU worker image: a slim Python, handler_sdk (no vLLM, no CUDA) and your handler, run as a non-root user.
# For handlers that need no GPU (pre/post-processing, small CPU models, API glue); Dockerfile.gpu is the vLLM one.
#
# Build with your handler (HANDLER names one file in the build context, copied to /app/handler/handler.py; a
# handler with modules of its own: COPY its folder there instead and point CMD at it):
#   docker build -t my-worker --build-arg HANDLER=examples/echo.py .
# Run against an endpoint (or on the platform, which sets the RUNPOD_* variables):
#   docker run -e HANDLER_SDK_ENDPOINT_URL=http://HOST:8000/v2/local my-worker
# Or serve the whole local endpoint from the image:
#   docker run -p 8000:8000 my-worker python -m handler_sdk.serve /app/handler/handler.py --host 0.0.0.0

ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY handler_sdk ./handler_sdk
# The fast extra (uvloop) is pure speed and has CPU wheels; add your handler's own dependencies the same way.
RUN python -m venv "$VIRTUAL_ENV" && pip install ".[fast]"

ARG HANDLER=examples/echo.py
COPY ${HANDLER} /app/handler/handler.py

# A fixed uid, so mounted volumes and Kubernetes' runAsNonRoot see the same user. Its home is the working
# directory: the worker's result spool and serve's journal (relative paths) land where it may write.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin worker
USER worker
WORKDIR /home/worker

CMD ["python", "-m", "handler_sdk.worker", "/app/handler/handler.py"]
