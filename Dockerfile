# coexist: one static-ish binary on a slim Debian base.
#
#   docker build -t coexist .            (or: buildah bud -t coexist .)
#   docker run -p 8080:8080 -v $PWD/coexist.toml:/etc/coexist/coexist.toml \
#     -e META_APP_SECRET -e WABA_TOKEN coexist serve --config /etc/coexist/coexist.toml
#
# The same image runs every role: `serve` (ingress), `work` (workers; scale by running more),
# `run` (all in one), and the operator commands (`queues`, `dlq`).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
RUN cargo build --release --locked --bin coexist

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/coexist /usr/local/bin/coexist
COPY examples/coexist.toml /etc/coexist/coexist.toml
# Listen on all interfaces inside the container (the example config says 127.0.0.1).
RUN sed -i 's/^listen = "127.0.0.1:8080"/listen = "0.0.0.0:8080"/' /etc/coexist/coexist.toml
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/coexist"]
CMD ["run", "--config", "/etc/coexist/coexist.toml"]
