# Weir's four images, for users with Docker; `.ci/images --out DIR` writes the same images as OCI
# archives without Docker (README, "Images"). One build stage makes the three static (musl)
# binaries once; each image is a target. From the repository root:
#   docker build --target operator -t ghcr.io/weir-mesh/weir-operator:0.1.0 .
#   docker build --target proxy    -t ghcr.io/weir-mesh/weir-sidecar:0.1.0 .
#   docker build --target init     -t ghcr.io/weir-mesh/weir-init:0.1.0 .
#   docker build --target shop     -t weir-shop:0.1.0 .
# The injection webhook names the sidecar's binary explicitly (/weir-sidecar in both of its
# images), so neither image's entrypoint matters to a pod; they are set for `docker run`.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# Without default features: the operator's autoscaler simulation and its charts stay out of the
# production binary (`weir-operator simulate-autoscaler` is a developer's command).
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --no-default-features \
    -p weir-operator -p weir-sidecar -p weir-shop

# The operator: the static binary on distroless static, non-root.
FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/weir-operator /weir-operator
USER 65532:65532
ENTRYPOINT ["/weir-operator"]
CMD ["run"]

# The proxy (`weir-proxy`): the static binary alone, at most 20 MB, run as uid 1337 — the uid the
# interception rules exempt, which no common application image uses.
FROM gcr.io/distroless/static-debian12:nonroot AS proxy
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/weir-sidecar /weir-sidecar
USER 1337:1337
ENTRYPOINT ["/weir-sidecar"]

# The init step (`weir-init`): the same binary plus iptables (nft and legacy). The pod runs it as
# root with NET_ADMIN and NET_RAW only, read-only root filesystem: the xtables lock goes to tmpfs.
FROM debian:bookworm-slim AS init
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/weir-sidecar /weir-sidecar
ENV XTABLES_LOCKFILE=/dev/shm/xtables.lock
USER 0:0
ENTRYPOINT ["/weir-sidecar", "init"]

# The demo shop: one static binary holding every service; the Deployment picks the service with
# its first argument (gateway, orders, inventory, payments, shipping).
FROM gcr.io/distroless/static-debian12:nonroot AS shop
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/weir-shop /weir-shop
USER 65532:65532
ENTRYPOINT ["/weir-shop"]
