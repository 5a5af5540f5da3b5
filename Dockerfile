# syntax=docker/dockerfile:1
# One image with every Harborhook binary; a Deployment picks its service with `command`.
#   docker build --build-arg VERSION=$(git describe --always) -t registry.example.com/harborhook:TAG .
# See docs/deployment.md.

ARG RUST_VERSION=1.95

# --- build -------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
# rdkafka builds its bundled librdkafka (with ssl and zstd): make, a C compiler, zlib, OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG VERSION=dev
ENV HARBORHOOK_BUILD_VERSION=${VERSION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p ingest-gateway -p fanout-processor -p delivery-consumer -p retry-scheduler -p harborctl \
 && mkdir -p /out \
 && cp target/release/ingest-gateway target/release/fanout-processor \
       target/release/delivery-consumer target/release/retry-scheduler target/release/harborctl /out/

# --- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="harborhook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://example.invalid/harborhook"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin harborhook
COPY --from=build /out/ /usr/local/bin/
ENV HARBORHOOK_VERSION=${VERSION} RUST_LOG=info
USER 10001:10001
EXPOSE 8080 9101 9102 9103
ENTRYPOINT ["/usr/local/bin/ingest-gateway"]
