# syntax=docker/dockerfile:1
# Build: docker build -t tenantgate .
# Run:   docker run -p 8080:8080 -v $PWD/gateway.toml:/etc/tenantgate/gateway.toml:ro \
#                   -v $PWD/tenants.json:/etc/tenantgate/tenants.json:ro tenantgate

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# Profile-guided release build (see BENCHMARKS.md): the wrapper applies pgo/ when this image's
# rustc has the LLVM that recorded it, and builds without it otherwise.
COPY .cargo ./.cargo
COPY scripts/rustc-pgo.sh ./scripts/rustc-pgo.sh
COPY pgo ./pgo
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/hot_path.rs \
    && cargo build --release --locked --features otel --bin tenantgate \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY tenants.example.json gateway.example.toml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --features otel --bin tenantgate \
    && strip target/release/tenantgate

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tenantgate /usr/local/bin/tenantgate
COPY --from=build /src/gateway.example.toml /etc/tenantgate/gateway.example.toml
COPY --from=build /src/tenants.example.json /etc/tenantgate/tenants.example.json
USER nonroot:nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tenantgate"]
CMD ["run", "--config", "/etc/tenantgate/gateway.toml"]
