"""Whole-word masking: a word's WordPiece pieces are targets together."""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="whole_word")
