"""BERT's random masking: 15% of tokens, 80/10/10 replacement."""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="random")
