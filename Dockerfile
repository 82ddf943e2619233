# coexist: one binary on a slim Debian base. The same image runs every role: `serve` (ingress),
# `work` (workers; scale by running more), `run` (all in one), and the operator commands
# (`queues`, `dlq`, `outbox`, ...).
#
#   docker build -t coexist .            (or: buildah bud -t coexist .)
#   docker run -p 8080:8080 -v $PWD/coexist.toml:/etc/coexist/coexist.toml \
#     -e META_APP_SECRET -e WABA_TOKEN coexist serve --config /etc/coexist/coexist.toml
#
# Targets (the runtime stages share `runtime-base`, so they cannot drift apart):
#   runtime           (default, last stage) compiles the binary in `rust:1-bookworm`.
#   runtime-prebuilt  copies an already built `target/release/coexist` from the build context,
#                     for machines without a registry (scripts/image-check.sh):
#                       cargo build --release --locked --bin coexist
#                       buildah bud --target runtime-prebuilt -t coexist .
#
# Both base images are build arguments, so a mirror or a locally made base can stand in:
#   --build-arg BASE_IMAGE=localhost/debian:bookworm-slim
#
# Without a config of its own the image runs `coexist run` on the bundled quick-start config
# (embedded in-memory queue, dry-run senders), listening on ${COEXIST_LISTEN:-0.0.0.0:8080}.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
RUN cargo build --release --locked --bin coexist

FROM ${BASE_IMAGE} AS runtime-base
# ca-certificates: the senders call the Graph API and gateways over HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY examples/coexist.toml /etc/coexist/coexist.toml
# Listen on all interfaces inside the container (the example config says 127.0.0.1); the
# address can be changed without a config file of one's own through COEXIST_LISTEN.
# ${COEXIST_LISTEN...} is written into the config literally; coexist expands it at start:
# hadolint ignore=SC2016
RUN sed -i 's/^listen = "127.0.0.1:8080"/listen = "${COEXIST_LISTEN:-0.0.0.0:8080}"/' /etc/coexist/coexist.toml \
 && grep -q '^listen = "${COEXIST_LISTEN:-0.0.0.0:8080}"' /etc/coexist/coexist.toml
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/coexist"]
CMD ["run", "--config", "/etc/coexist/coexist.toml"]

FROM runtime-base AS runtime-prebuilt
COPY target/release/coexist /usr/local/bin/coexist

# Last stage: what a plain `docker build .` produces.
FROM runtime-base AS runtime
COPY --from=build /src/target/release/coexist /usr/local/bin/coexist
