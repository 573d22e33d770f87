# Multi-stage build: compile with the Rust toolchain, ship only the binary on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hookbus

FROM debian:bookworm-slim
# ca-certificates comes with the base image's release; pinning its exact version would break
# the build at its next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 hookbus \
    && mkdir -p /var/lib/hookbus/spool \
    && chown -R hookbus /var/lib/hookbus
COPY --from=build /src/target/release/hookbus /usr/local/bin/hookbus
# The user has a fixed uid (10001, made above), the one the StatefulSet's runAsUser names.
# hadolint ignore=DL3066
USER hookbus
ENV HOOKBUS_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["hookbus"]
CMD ["serve"]
