# One image for every role of compose.yaml (framepack-bot serve | worker | frontends).
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0
COPY . .
RUN pip install --no-cache-dir '.[postgres,s3]'
CMD ["framepack-bot", "serve"]
