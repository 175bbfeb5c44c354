# graph-cdc container image: a release build, then a small non-root runtime.
# The build stage runs the same release build as `cargo build --release --locked`.

FROM rust:1.95-bookworm AS build
# cmake builds aws-lc (TLS); librdkafka's bundled build needs only a C toolchain.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY config config
RUN cargo build --release --locked --bin graph-cdc

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home graph-cdc
COPY --from=build /src/target/release/graph-cdc /usr/local/bin/graph-cdc
COPY config /etc/graph-cdc
USER 10001
EXPOSE 8083
ENTRYPOINT ["graph-cdc"]
# Without arguments it runs the embedded demo; Helm and compose pass `run --config …`.
CMD ["demo"]
