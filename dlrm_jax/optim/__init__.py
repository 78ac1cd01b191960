"""Optimizers: sparse updates of touched table rows, the MLPs' optax transforms,
and the reference's learning-rate schedule.
"""
