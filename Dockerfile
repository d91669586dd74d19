# Build a static binary, then run it in distroless as the nonroot user.
FROM golang:1.26 AS build
WORKDIR /src
COPY . .
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.buildVersion=${VERSION}" -o /out/eventgate .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/eventgate /eventgate
USER nonroot:nonroot
EXPOSE 3000
# Distroless has no shell and no curl: the binary checks itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/eventgate", "-healthcheck"]
ENTRYPOINT ["/eventgate"]
