# syntax=docker/dockerfile:1
# fluxserve image: `fluxserve serve` with the embedded tiny model, plus fluxctl.
#
#   docker build -t fluxserve:cuda .                              # CUDA (sm_80, sm_89, sm_90a)
#   docker build --build-arg VARIANT=cpu -t fluxserve:cpu .       # CPU only, no CUDA anywhere
#   docker run --rm --gpus all --read-only -p 50051:50051 -p 9090:9090 fluxserve:cuda
#
# Both variants build on Debian 12, because `./x setup` installs Debian 12 package names (gRPC
# 1.51, abseil 20220623, prometheus-cpp 1.0, ...). NVIDIA publishes no Debian CUDA image, so the
# CUDA variant copies the toolkit out of the official Ubuntu 22.04 CUDA image (glibc 2.35, so
# nvcc runs on Debian 12's glibc 2.36) and the runtime copies the CUDA libraries from the
# matching runtime image. The build steps are exactly the ./x commands CI runs
# (tests/deploy/dockerfile_test.py checks that no other build recipe creeps in).
ARG VARIANT=cuda
ARG CUDA_VERSION=13.0.1
ARG DEBIAN_IMAGE=debian:bookworm

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS cuda-devel
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS cuda-runtime

# ---- toolchains: Debian 12, with or without the CUDA toolkit ---------------------------------
FROM ${DEBIAN_IMAGE} AS toolchain-cpu
ENV FLUXSERVE_CMAKE_ARGS="-DFLUXSERVE_CUDA=OFF"

FROM ${DEBIAN_IMAGE} AS toolchain-cuda
COPY --from=cuda-devel /usr/local/cuda/ /usr/local/cuda/
ENV PATH=/usr/local/cuda/bin:${PATH} \
    FLUXSERVE_CMAKE_ARGS="-DFLUXSERVE_CUDA=ON"

# ---- build: the same ./x setup and ./x build as the README and CI ---------------------------
# hadolint ignore=DL3006
FROM toolchain-${VARIANT} AS build
WORKDIR /src
# Test-only tools (the kubernetes-validate/hadolint venv) are not needed to build the image.
ENV FLUXSERVE_SETUP_TEST_TOOLS=0
# `./x setup` needs only the script: installing the packages stays cached across source edits.
COPY x ./
RUN ./x setup
COPY . .
# Portable x86-64-v3 code instead of -march=native; no test binaries in the image. Then the
# installed layout: the binaries with the default model beside them (cli/generate.cc looks in
# <binary dir>/models/tiny-flux) and an empty mount point for the model cache volume.
RUN FLUXSERVE_CMAKE_ARGS="${FLUXSERVE_CMAKE_ARGS} -DFLUXSERVE_MARCH=x86-64-v3 -DBUILD_TESTING=OFF" \
      ./x build \
    && mkdir -p /out/opt/fluxserve/models/cache \
    && cp build/fluxserve build/fluxctl /out/opt/fluxserve/ \
    && cp -r models/tiny-flux /out/opt/fluxserve/models/tiny-flux

# ---- runtime: Debian 12 slim with the shared libraries the binaries link ---------------------
FROM debian:bookworm-slim AS runtime-cpu

FROM debian:bookworm-slim AS runtime-cuda
# The CUDA libraries fluxserve may load (cudart, cuBLAS/cuBLASLt); the driver (libcuda) comes
# from the host through the NVIDIA container toolkit.
COPY --from=cuda-runtime /usr/local/cuda/lib64/libcudart.so.* /usr/local/cuda/lib64/libcublas.so.* \
     /usr/local/cuda/lib64/libcublasLt.so.* /usr/local/cuda/lib64/
RUN echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# hadolint ignore=DL3006
FROM runtime-${VARIANT}
# Runtime packages of what the binaries link (tests/deploy/dockerfile_test.py checks this list
# against `ldd build/fluxserve build/fluxctl`); tini is PID 1 and forwards SIGTERM for the drain.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
      libabsl20220623 libgomp1 libopenblas0-openmp libpng16-16 libsentencepiece0 \
      libgrpc++1.51 libgrpc29 libprotobuf32 libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fluxserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fluxserve
COPY --from=build --chown=0:0 /out/ /
# The cache is the one writable path under the model root (a volume in Kubernetes).
RUN chown 10001:10001 /opt/fluxserve/models/cache
ENV PATH=/opt/fluxserve:${PATH} \
    FLUXSERVE_MODEL_ROOT=/opt/fluxserve/models
# Run as the numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# Writable paths: /tmp and the model cache. Everything else can be read-only (--read-only,
# readOnlyRootFilesystem).
VOLUME ["/tmp", "/opt/fluxserve/models/cache"]
EXPOSE 50051 9090
# Docker's own health state follows readiness (the default model is loaded). Kubernetes
# ignores HEALTHCHECK and uses its gRPC probes (deploy/k8s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
  CMD ["/opt/fluxserve/fluxctl", "--server", "127.0.0.1:50051", "health", "--service", "readiness"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fluxserve/fluxserve"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090"]
