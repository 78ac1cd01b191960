"""dlrm-jax: DLRM in JAX/Flax with sharded embedding tables."""
