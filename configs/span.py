"""SpanBERT span masking: spans of Geometric(0.2) words, clipped at 10, until the budget is met."""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="span")
