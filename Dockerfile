# inboxd container image.
#
#   docker build -t inboxd:dev .
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/inboxd.toml:/etc/inboxd/inboxd.toml:ro" -v inboxd-data:/var/lib/inboxd \
#     -e CONTOSO_CLIENT_SECRET=... inboxd:dev
#
# The image holds the binary, CA certificates and nothing else (no shell). It runs as
# uid/gid 65532 ("nonroot") and writes only to /var/lib/inboxd (the SQLite store and a
# file sink belong there), so it runs unchanged with a read-only root filesystem.
# Kubernetes manifests: deploy/; operations: docs/operations.md. CI lints this file with
# hadolint (.ci/ops-checks) and tests/daemon/image.rs runs the binary the way this image does.

# ---------------------------------------------------------------------------------------
# Base images. A release pins both by digest, so that a rebuild gets the same bytes. The
# defaults carry tags only: this repository's CI cannot reach an image registry to resolve a
# digest, and a made-up one would be worse than none. Resolve each tag where a registry is
# reachable (`docker buildx imagetools inspect IMAGE:TAG`, the "Digest:" line) and build with
#   --build-arg BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm@sha256:<digest>
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>
# or write them into the defaults below. .ci/ops-checks refuses a digest that is not
# sha256:<64 hex digits> and lists the base images still unpinned; with
# INBOXD_REQUIRE_PINNED=1 (release CI) an unpinned one fails it.
# Keep the rust tag in step with `rust-version` in Cargo.toml; bookworm matches the glibc of
# the distroless runtime (debian12).
# ---------------------------------------------------------------------------------------
ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------
# Build stage.
# ---------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder

WORKDIR /build

# The image ships no debug info: the release profile's line tables are for local profiling
# (they are most of the binary's size). Symbols stay, so a panic's backtrace names functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

# 1. Dependencies only, against a placeholder crate: this layer is rebuilt only when
#    Cargo.toml or Cargo.lock change, not on every source edit. The placeholder's own
#    artefacts are removed afterwards so they can never be mistaken for the real binary.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src target/release/inboxd target/release/deps/inboxd-* \
        target/release/deps/libinboxd-* target/release/.fingerprint/inboxd-*

# 2. The real sources (plus the files they embed with include_str!). COPY can carry
#    mtimes older than the placeholder build; touching the crate roots makes cargo
#    rebuild the crate for certain.
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY schemas ./schemas
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features \
    && install -D -m 0755 target/release/inboxd /out/usr/local/bin/inboxd \
    && /out/usr/local/bin/inboxd --version \
    && mkdir -p /out/var/lib/inboxd /out/etc/inboxd

# ---------------------------------------------------------------------------------------
# Runtime stage: glibc, libgcc, CA certificates and a "nonroot" user (65532), no shell.
# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="inboxd" \
      org.opencontainers.image.description="Connects Office 365 / Exchange Online mailboxes to contact-center routing" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

COPY --from=builder /out/usr/local/bin/inboxd /usr/local/bin/inboxd
# The data directory exists in the image and belongs to the runtime user, so a fresh named
# volume mounted there inherits that owner. /etc/inboxd stays root-owned: config is read-only.
COPY --from=builder --chown=65532:65532 /out/var/lib/inboxd /var/lib/inboxd
COPY --from=builder /out/etc/inboxd /etc/inboxd

# glibc's allocator: by default, freeing a mapped buffer raises the mmap threshold to its size
# (up to 32 MB), so later buffers of tens of MB come from per-thread arenas and stay resident
# after they are freed (large outbound requests left hundreds of MB behind). Two arenas, and every buffer of 4 MiB or more mapped
# on its own and returned to the OS when freed. `inboxd bench outbound` runs the daemon with
# the same two settings; docs/operations.md has the figures.
ENV MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304

USER 65532:65532
# Relative paths in the config (e.g. the default sqlite://./data/inboxd.db) land in the volume.
WORKDIR /var/lib/inboxd
VOLUME ["/var/lib/inboxd"]

# server.listen: health (/livez, /readyz), metrics (/metrics) and the API (/v1).
EXPOSE 8080

# Liveness only (/livez never checks Graph or the store). If you change server.listen, override
# this with `docker run --health-cmd` or your orchestrator's own probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/inboxd", "healthcheck", "--url", "http://127.0.0.1:8080"]

# SIGTERM drains in-flight deliveries for up to server.shutdown_grace (20s by default):
# give `docker stop` more than that (docker stop -t 30; compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/inboxd"]
# Mount the config here (read-only); secrets are env:NAME or file:PATH references (deploy/
# mounts them as files under /run/secrets/inboxd, so a rotation needs no restart).
CMD ["run", "--config", "/etc/inboxd/inboxd.toml"]
