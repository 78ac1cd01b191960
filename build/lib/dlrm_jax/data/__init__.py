"""Criteo data.

Raw-format parsing, preprocessing, the synthetic generator and host batch loading.
"""
