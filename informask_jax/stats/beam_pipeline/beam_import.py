"""Imports Apache Beam once, before the package's modules do, dropping the warning its first
import logs on the root logger when BigQuery's client (apitools) is missing: a warning about a
source this pipeline never reads, at the top of every run's output."""

import logging


class _NoBigQueryWarning(logging.Filter):
  def filter(self, record):
    return "apitools not found" not in record.getMessage()


_filter = _NoBigQueryWarning()
logging.getLogger().addFilter(_filter)
try:  # Only around the import: the root logger is the user's.
  import apache_beam  # noqa: F401
except ImportError:  # Optional dependency: the modules that need it say so.
  pass
finally:
  logging.getLogger().removeFilter(_filter)
