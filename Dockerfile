# CPU image of the current engine and CLI. Built with the same ./x commands CI runs.
# The CUDA multi-stage image and the server arrive with the deployment and server issues.
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY . .
RUN ./x setup && FLUXSERVE_CMAKE_ARGS="-DFLUXSERVE_MARCH=x86-64-v3 -DFLUXSERVE_CUDA=OFF" ./x build

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libabsl20220623 \
      libopenblas0-openmp libgomp1 libsentencepiece0 libpng16-16 \
    && rm -rf /var/lib/apt/lists/* && useradd -r -u 10001 fluxserve
COPY --from=build /src/build/fluxserve /opt/fluxserve/fluxserve
COPY --from=build /src/models /opt/fluxserve/models
USER fluxserve
WORKDIR /tmp
ENTRYPOINT ["/opt/fluxserve/fluxserve"]
CMD ["generate", "--output", "/tmp/fluxserve.png"]
