# Static bursar binary on an empty base image.
#   docker build -t bursar .
#   docker run -p 8000:8000 -e BURSAR_ADMIN_KEY=... -e BURSAR_LISTEN=0.0.0.0:8000 \
#     -e BURSAR_DATABASE=postgres://... -e BURSAR_REDIS=redis://... bursar
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bursar \
 && strip target/release/bursar

FROM scratch
COPY --from=build /src/target/release/bursar /bursar
# CA roots for the providers' HTTPS endpoints (add a private CA by mounting
# your own bundle over this file).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /data
ENV BURSAR_LISTEN=0.0.0.0:8000 BURSAR_DATABASE=sqlite:///data/bursar.db BURSAR_LOG_FORMAT=json
EXPOSE 8000
ENTRYPOINT ["/bursar"]
CMD ["serve"]
