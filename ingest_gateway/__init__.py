"""The ingest gateway: vendor HTTP dialects in, canonical Avro records onto Kafka out."""
