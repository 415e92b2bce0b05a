# Image for stream_reco workers and tools (used by docker-compose.yml).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_reco ./stream_reco
COPY schemas ./schemas
RUN pip install --no-cache-dir -e .
ENV STREAM_RECO_DATA_DIR=/data
ENTRYPOINT ["stream-reco"]
CMD ["worker"]
