"""The dense part of the model as Flax modules: MLPs, interactions, cross nets,
the embedding MLP, and the one dtype, precision and initialiser policy they share.
"""
