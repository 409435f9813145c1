"""informask-jax: masked-language-model pretraining in JAX/Flax with InforMask."""

__version__ = "0.1.0"
