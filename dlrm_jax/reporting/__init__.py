"""A run's records: config.json, metrics.jsonl and the printed lines, TensorBoard
events, curves.png and phase timings.
"""
