# syntax=docker/dockerfile:1

# ---- build ----------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# .git is not copied in (see .dockerignore): pass the revision for `pgtenant --version`,
#   docker build --build-arg PGTENANT_GIT_REVISION=$(git rev-parse --short=12 HEAD) .
ARG PGTENANT_GIT_REVISION=
ENV PGTENANT_GIT_REVISION=$PGTENANT_GIT_REVISION
COPY . .
# The cache mounts keep downloaded crates and build output between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/pgtenant /usr/local/bin/pgtenant

# ---- run ------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pgtenant

COPY --from=builder /usr/local/bin/pgtenant /usr/local/bin/pgtenant
# The example settings and registry; mount your own over /etc/pgtenant.
COPY config/ /etc/pgtenant/

WORKDIR /etc/pgtenant
# Listen on all interfaces inside the container, and find the registry next to the
# settings file (the file's own `registry.file` is relative to the working directory).
ENV PGTENANT__PROXY__LISTEN=0.0.0.0:6432 \
    PGTENANT__REGISTRY__FILE=/etc/pgtenant/tenants.toml

USER pgtenant
# Smoke test: the binary runs in this image and accepts the shipped configuration.
RUN pgtenant --version && pgtenant check --config /etc/pgtenant/pgtenant.toml
EXPOSE 6432
ENTRYPOINT ["pgtenant"]
CMD ["serve", "--config", "/etc/pgtenant/pgtenant.toml"]
