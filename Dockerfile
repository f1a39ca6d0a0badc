# StudyStream image: the receiver and the Faust worker (choose with the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/studystream

COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
COPY domain ./domain
COPY scu ./scu
COPY scp ./scp
COPY infra ./infra
COPY web ./web
RUN pip install --no-cache-dir . \
 && useradd --system --home /var/lib/studystream studystream \
 && mkdir -p /var/lib/studystream /data/received_dicoms /data/bundles \
 && chown -R studystream /var/lib/studystream /data

USER studystream
ENV STUDYSTREAM_STATE_DIR=/var/lib/studystream \
    STUDYSTREAM_STORAGE_DIR=/data/received_dicoms \
    STUDYSTREAM_BUNDLES_DIR=/data/bundles
ENTRYPOINT ["studystream"]
CMD ["worker", "-l", "info"]
