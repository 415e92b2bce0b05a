# Image for stream_reco workers and the shop-side commands (replay, tail, simulate, topics; docker-compose.yml).
# It installs the base package only: what a worker needs, without the development tools' scipy, matplotlib
# and psutil. Build with `--build-arg EXTRAS=[train]` for an image that also runs `stream-reco train`.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_reco ./stream_reco
COPY schemas ./schemas
ARG EXTRAS=""
RUN pip install --no-cache-dir -e ".${EXTRAS}"
ENV STREAM_RECO_DATA_DIR=/data
ENTRYPOINT ["stream-reco"]
CMD ["worker"]
