"""Criteo data: raw-format parsing, preprocessing, the synthetic generator and host batch loading."""
