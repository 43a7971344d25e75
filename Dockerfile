# One image for the operator and every worker: `ferry operator`, `ferry worker`, ...
#   docker build -t ghcr.io/ferry-dev/ferry:0.1.0 .
# The binary links glibc dynamically (ring's assembly, rustls); the runtime base is
# distroless cc (glibc, libgcc, CA certificates, no shell) running as its nonroot user 65532,
# the user the chart and the worker pods ask for.
#
# Both base images are pinned by digest (a tag moves; a digest is the exact bytes reviewed),
# with the tag beside it for people. To update: read the tag's current digest for the
# multi-platform index, e.g. `docker buildx imagetools inspect rust:1.95-slim-bookworm` (or
# `crane digest <image>:<tag>`), replace the digest here, build, and run the e2e suite with
# FERRY_E2E_WORKER_IMAGE set to the new image before it lands.

FROM docker.io/library/rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# Cargo.toml names the benches; their files must exist for any build.
COPY benches ./benches
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > src/bin/kubectl-ferry.rs \
    && cargo build --release --locked --bin ferry \
    && rm -rf src
COPY src ./src
COPY examples ./examples
# The embedded examples and the lib must be rebuilt, not taken from the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ferry \
    && strip target/release/ferry

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER 65532:65532
# Worker: 8080 (API); operator: 8081 (/healthz, /readyz, /metrics).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["--help"]
