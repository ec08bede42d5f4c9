"""Ingest: Segment-spec messages in, validated, deduplicated, identity-resolved events out."""
