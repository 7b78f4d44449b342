# One image for every binary: ingest (stage 1), processor (stage 2), sandbox (the simulated
# Fluent and commercetools APIs) and demo. Choose one with the command, e.g. `docker run IMAGE
# processor`. See README.md "Deployment".

# Build: librdkafka is compiled from source with TLS against Debian's OpenSSL.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin ingest --bin processor --bin sandbox --bin demo \
    && mkdir -p /out \
    && for bin in ingest processor sandbox demo; do \
        strip -o "/out/$bin" "target/release/$bin"; \
    done

# Run: glibc, OpenSSL (librdkafka links it) and CA roots, nothing else; not root.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# The gateway's port and the processor's metrics and health port.
EXPOSE 8080 9090
# Listen on every interface inside the container (the binaries' own defaults).
ENV INGEST_LISTEN=0.0.0.0:8080 METRICS_LISTEN=0.0.0.0:9090 SANDBOX_LISTEN=0.0.0.0:8090
CMD ["ingest"]
