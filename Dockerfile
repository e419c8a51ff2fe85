# The model endpoint as a SageMaker-style inference image (`serving/`; never imports Django).
#
#   docker build -t tutorloop-endpoint .
#   docker run -p 8080:8080 -v /path/to/model:/opt/ml/model tutorloop-endpoint serve
#
# SageMaker contract: the container is started with the argument `serve`, must answer
# `GET /ping` and `POST /invocations` on port 8080 (or $SAGEMAKER_BIND_TO_PORT), and finds the
# model unpacked under /opt/ml/model. Our layout there:
#   /opt/ml/model/base/                       the base model + tokenizer (a Hugging Face directory)
#   /opt/ml/model/adapters/<subject>/v<N>/    PEFT adapter artefacts with manifest.json
# The newest adapter version of each subject that passes its SHA-256 manifest check is loaded.
# Without /opt/ml/model/base the bundled demo model is built on first start (slow; bake it in).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TUTOR_VAR_DIR=/opt/ml/var \
    SM_MODEL_DIR=/opt/ml/model

WORKDIR /opt/program

# CPU torch first (a bare `torch` requirement would pull the multi-GB CUDA build); swap the index
# URL for a CUDA wheel index to build a GPU image.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY rlhf ./rlhf
COPY serving ./serving
# Only the packages the endpoint imports (rlhf's core + serving); Django is not needed here.
RUN pip install "transformers>=5.0,<6" "tokenizers>=0.21,<1" "peft>=0.17,<1" "safetensors" \
        "starlette>=0.40,<2" "uvicorn[standard]>=0.30,<1" "httpx>=0.27,<1" "prometheus-client>=0.20,<1" \
        "numpy>=1.26,<3" "tqdm>=4.66,<5" "accelerate>=1.10,<2" \
    && printf '#!/bin/sh\nexec python -m serving --host 0.0.0.0 "$@"\n' > /usr/local/bin/serve \
    && chmod +x /usr/local/bin/serve \
    && mkdir -p /opt/ml/model /opt/ml/var

ENV PYTHONPATH=/opt/program
# SageMaker multi-model endpoints require this label; the port label lets SageMaker pick the port.
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080'))"
CMD ["serve"]
