"""Orbax checkpoints: what a checkpoint holds, saving and keeping them, restoring
onto any mesh or plan, and the per-table view of the fused buffers.
"""
