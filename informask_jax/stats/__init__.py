"""Corpus statistics for InforMask and PMI-Masking: counts, PMI, masking rates, n-gram vocabulary.

`build_artifacts(config)` (or `python -m informask_jax.stats build --config ...`) writes them to
`<config.data.cache_dir>/stats/<key>/`; `ensure_artifacts` builds what a run needs and is
missing; `load_artifacts` reads and checks a directory. The counters in `counting`, `pmi`,
`ngrams` and `rates` take plain arrays and are usable without configs or the input pipeline.
"""

from informask_jax.stats.artifacts import (
    STAGES,
    ArtifactError,
    Artifacts,
    CorruptArtifactError,
    TokenizerMismatchError,
    load_artifacts,
)
from informask_jax.stats.build import (
    artifact_dir,
    build_artifacts,
    ensure_artifacts,
    stats_params,
)

__all__ = [
    "STAGES",
    "ArtifactError",
    "Artifacts",
    "CorruptArtifactError",
    "TokenizerMismatchError",
    "artifact_dir",
    "build_artifacts",
    "ensure_artifacts",
    "load_artifacts",
    "stats_params",
]
