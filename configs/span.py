"""SpanBERT span masking: spans of Geometric(0.2) words, restricted to 1..10, to the budget."""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="span")
