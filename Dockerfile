# graph-cdc container image: a release build, then a small non-root runtime.
# It ships two binaries: `graph-cdc` (the connector, with its embedded demo) and `graph-sim`
# (the Graph simulator the compose stack runs). Only their sources are copied: the test kit's
# manifest is there because the workspace lists it, its code is neither copied nor built.

FROM rust:1.95-bookworm AS build
# librdkafka is compiled from source (rdkafka-sys: configure + make) against the system
# OpenSSL (libssl-dev, found through pkg-config; perl for OpenSSL's build scripts) and zlib;
# libcurl (OIDC token fetching) and zstd are built from source by their crates and linked
# statically. libcurl4-openssl-dev is there only for librdkafka's configure, which probes
# `-lcurl` and silently builds without OIDC when that fails. cmake builds aws-lc (rustls,
# the Graph side). Most are in the base image already: stated so a slimmer base fails loudly.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake libcurl4-openssl-dev libssl-dev make perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY crates/graph-sim crates/graph-sim
COPY crates/graph-cdc-testkit/Cargo.toml crates/graph-cdc-testkit/Cargo.toml
RUN cargo build --release --locked --package graph-cdc --package graph-sim --bins

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS and SASL/SCRAM. ca-certificates: public CAs, so ssl.ca.location
# can stay unset for Confluent Cloud, MSK or Event Hubs (librdkafka reads the system store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home graph-cdc
COPY --from=build /src/target/release/graph-cdc /src/target/release/graph-sim /usr/local/bin/
COPY config /etc/graph-cdc
USER 10001
EXPOSE 8083
ENTRYPOINT ["graph-cdc"]
# Without arguments it runs the embedded demo; Helm and compose pass `run --config …`.
CMD ["demo"]
