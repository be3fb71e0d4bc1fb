# syntax=docker/dockerfile:1
# One image for every tier: `courier <tier>` (api, logic, connect, task, site,
# migrate, replay, bench, standalone). Built by scripts/image.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka is compiled from source by rdkafka-sys (make, a C++ compiler,
# zstd); the Debian release of the base image pins these packages' versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config libzstd-dev python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin courier \
    && install -D -m 0755 target/release/courier /out/courier

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="courier" \
      org.opencontainers.image.description="Courier: a durable, observable instant-messaging platform speaking gochat's protocol" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/courier-im/courier"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 courier \
    && useradd --system --uid 10001 --gid courier --home-dir /var/lib/courier --shell /usr/sbin/nologin courier \
    && install -d -o courier -g courier /var/lib/courier
COPY --from=build /out/courier /usr/local/bin/courier
# Embedded data (standalone) lives in a volume; the root filesystem can be
# read-only.
VOLUME ["/var/lib/courier"]
WORKDIR /var/lib/courier
ENV COURIER_DATA_DIR=/var/lib/courier
USER 10001:10001
EXPOSE 7070 7000 7001 8080
ENTRYPOINT ["/usr/local/bin/courier"]
CMD ["standalone"]
