"""A run from start to end: the training loop, evaluation and prediction, export,
and preemption; cli.py dispatches to these.
"""
