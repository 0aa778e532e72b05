# Multi-stage: build the single executable with Bun, run it on a slim base as a non-root user.
FROM oven/bun:1 AS build
WORKDIR /app
COPY package.json bun.lock bunfig.toml tsconfig.json ./
RUN bun install --frozen-lockfile
COPY src ./src
COPY migrations ./migrations
# The package's own build: the workers, the page (Bun's HTML bundling) and the OpenAPI UI files go in too.
RUN bun run build

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin city \
 && mkdir -p /data && chown city:city /data
COPY --from=build /app/dist/daarion-city /usr/local/bin/daarion-city
USER city
WORKDIR /data
ENV DATA_DIR=/data PORT=7001 HOST=0.0.0.0
EXPOSE 7001
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD ["/usr/local/bin/daarion-city", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/daarion-city"]
CMD ["serve"]
