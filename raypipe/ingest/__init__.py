"""Ingest stage: data sources, built-in datasets and train/validation splits."""
