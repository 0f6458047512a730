"""Ingest: read CSV, Parquet, IDX and NPZ into validated, split, partitioned engine frames."""
