"""Test and benchmark helpers: local object-store servers and deterministic data."""
