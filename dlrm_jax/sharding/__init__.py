"""Embedding tables across devices: the mesh, table specs, the planner, one object per
plan (lookup, gradient routing, initialisation, traffic), bags and collectives.
"""
