"""The training machinery: state created already sharded, the pure jitted step,
K steps per device call, evaluation with exact metrics, and the run builder.
"""
