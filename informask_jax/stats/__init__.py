"""Corpus statistics for InforMask and PMI-Masking: counts, PMI, masking rates, n-gram vocabulary.

`build_artifacts(config)` (or `python -m informask_jax.stats build --config ...`) writes them to
`<config.data.cache_dir>/stats/<key>/`; `ensure_artifacts` builds what a run needs and is
missing; `load_artifacts` reads and checks a directory. The counters in `counting`, `pmi`,
`ngrams` and `rates` take plain arrays and are usable without configs or the input pipeline.

For a distributed pipeline (e.g. a Beam combiner): `counting.chunk_unigram_counts`,
`counting.chunk_pair_counts` and `ngrams.chunk_ngram_counts` give a chunk's partial counts; the
counts of any split of the corpus sum to the totals, and the thresholds (min_pair_count,
ngram_min_count) apply only after the final merge (`PairAccumulator.finalize`,
`KeyCounter.result`).

Which stage a masking strategy needs: informask -> "rates", informask_online -> "pmi",
pmi_span -> "ngrams" (its bigram variant reads `Artifacts.bigrams`).
"""

from informask_jax.stats.artifacts import (
    STAGES,
    ArtifactError,
    Artifacts,
    CorruptArtifactError,
    TokenizerMismatchError,
    check_table_tokenizer,
    load_artifacts,
)
from informask_jax.stats.build import (
    artifact_dir,
    build_artifacts,
    ensure_artifacts,
    stages_needed,
    stages_read,
    stats_params,
)

__all__ = [
    "STAGES",
    "ArtifactError",
    "Artifacts",
    "CorruptArtifactError",
    "TokenizerMismatchError",
    "check_table_tokenizer",
    "artifact_dir",
    "build_artifacts",
    "ensure_artifacts",
    "stages_read",
    "load_artifacts",
    "stages_needed",
    "stats_params",
]
