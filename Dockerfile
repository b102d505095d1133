# skiff's image: one static binary FROM scratch, nothing else.
#
#   docker build -t skiff .                                  # full build
#   docker build --build-arg BUILD_FLAGS=--minimal -t skiff:minimal .
#   docker buildx build --platform linux/amd64,linux/arm64 -t skiff .   # both
#
# Cross-builds like Go's GOARCH: the builder stages run on the build host's
# own platform ($BUILDPLATFORM, no emulation) and scripts/build-static
# compiles for the image's ($TARGETARCH): amd64 with musl-gcc, arm64 with
# cargo-zigbuild and Zig (installed by the script).
#
# Reproducible: build the same commit with the same RUST_VERSION and
# SOURCE_DATE_EPOCH (e.g. `git log -1 --format=%ct`) and you get the same
# image: podman `--timestamp "$SOURCE_DATE_EPOCH"`, docker buildx
# `--build-arg SOURCE_DATE_EPOCH=… --output type=image,rewrite-timestamp=true`.
# The binary reads no clock at build time and its paths are remapped to fixed
# ones by scripts/build-static. docs/IMAGE.md has the details.
#
# The test suite (scripts/test-image) builds the binary on the host and
# replaces this `build` stage with a directory holding the same /rootfs
# (`podman build --build-context build=DIR`), so the final stage below is
# exactly what ships.

ARG RUST_VERSION=1.95.0

# ---------------------------------------------------------------- build ---
FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.78
# musl-gcc compiles the C inside (SQLite, Lua, ring, mimalloc) for x86_64
# musl; python3-venv holds the Zig cross toolchain for other targets.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /skiff

# The recipe: manifests, lock file and a stub for every target, so the
# dependency layer below is rebuilt only when they change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# Set by buildx/podman from --platform (amd64, arm64); build-static maps it
# to the musl target triple.
ARG TARGETARCH
# The toolchain for that target (the rustup target; for arm64 also Zig and
# cargo-zigbuild, pinned, in a venv under target/tools) in its own layer.
COPY scripts/build-static scripts/build-static
RUN scripts/build-static ${TARGETARCH:-amd64} --tools-only
# e.g. --minimal (hello routes only) or `--features lua,users`.
ARG BUILD_FLAGS=""
# Dependencies in their own layer. cargo-chef lays out the skeleton and
# build-static compiles it, with the same flags (path remapping, features,
# target) as the real build below, so that build reuses every artifact.
COPY --from=planner /skiff/recipe.json recipe.json
RUN cargo chef cook --no-build --recipe-path recipe.json \
 && scripts/build-static ${TARGETARCH:-amd64} ${BUILD_FLAGS} --deps-only

# The real sources. Copied files keep their (older) times; touching them
# makes cargo rebuild skiff and its build script rather than trust the stubs.
COPY . .
ARG REVISION=""
RUN find src build.rs -type f -exec touch {} + \
 && SKIFF_GIT_COMMIT="$(printf '%.12s' "${REVISION:-unknown}")" \
    scripts/build-static ${TARGETARCH:-amd64} ${BUILD_FLAGS} --out /rootfs \
 && install -d -m 0755 /rootfs/etc \
 && install -m 0644 image/passwd image/group /rootfs/etc/ \
 && install -d -m 0700 -o 65534 -g 65534 /rootfs/data \
 && chmod 0755 /rootfs /rootfs/skiff

# ---------------------------------------------------------------- image ---
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=""
# The repository URL for the `source` label: set it when you build, e.g.
# `--build-arg SOURCE="$(git remote get-url origin)"`; empty by default
# rather than a made-up address.
ARG SOURCE=""
# /skiff, /etc/passwd, /etc/group (root and nobody) and /data owned by nobody.
COPY --from=build /rootfs/ /
USER 65534:65534
EXPOSE 8080
ENV DATABASE_URL=sqlite:///data/skiff.db
# No shell and no curl in here: the binary checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/skiff", "healthcheck"]
ENTRYPOINT ["/skiff"]
CMD ["serve"]
LABEL org.opencontainers.image.title="skiff" \
      org.opencontainers.image.description="A small, production-grade web API in one static binary, shipped FROM scratch." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
