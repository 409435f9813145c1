"""PMI-Masking (Levine et al., ICLR 2021): high-PMI word n-grams are masked as units.

`--config.masking.pmi_variant=bigram` gives the InforMask repository's simpler bigram variant.
"""

from configs import base


def get_config(arg=None):
  return base.get_base_config(arg, strategy="pmi_span")
