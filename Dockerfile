# Multi-stage build: compile with the Rust toolchain, ship only the binary on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hookbus

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 hookbus \
    && mkdir -p /var/lib/hookbus/spool \
    && chown -R hookbus /var/lib/hookbus
COPY --from=build /src/target/release/hookbus /usr/local/bin/hookbus
USER hookbus
ENV HOOKBUS_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["hookbus"]
CMD ["serve"]
