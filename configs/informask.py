"""InforMask (Sadeq et al., EMNLP 2022): mask tokens in proportion to their informativeness.

Uses the paper's efficient variant: per-token masking rates precomputed from the corpus with
sample-and-score over PMI (built automatically by train.py, or `python -m informask_jax.stats
build`). `--config.masking.name=informask_online` scores K candidate masks per sequence instead.
"""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="informask")
