"""The ingest stage: sources, cleaning, dedup, synthetic code, the teacher client."""
