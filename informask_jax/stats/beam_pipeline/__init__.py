"""The corpus statistics on Apache Beam: the local builder's tables, computed from text shards on
any Beam runner (the local FnApiRunner by default; Dataflow, Spark or Flink with the same code).

  python -m informask_jax.stats.beam_pipeline --config configs/informask.py:paper \
      --files='gs://BUCKET/wiki-books/*.parquet' --output=gs://BUCKET/stats/wiki-books \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://BUCKET/tmp

Flags this module does not know are handed to Beam as pipeline options. Without --output the
sources must be local (or on a shared file system) and the tables go to the config's statistics
cache, `<cache_dir>/stats/<key>`, where train.py finds them: the launcher then reads the corpus
once, sequentially, for the fingerprint that names that directory (as the local builder does).

What runs where. The per-chunk counters of `counting` and `ngrams` are the unit of work and the
merges are theirs (`PairAccumulator`, `KeyCounter`, `merge_unigrams`), wrapped in Beam combiners;
PMI, n-gram scores and the vocabulary come from `pmi.pmi_table`, `ngrams.score_ngrams`,
`ngrams.assemble_vocab` and `ngrams.bigram_table` on the merged counts, so the numbers are the
local builder's, bit for bit:

  files -> documents (the readers of `corpus`: blank-line separated .txt, .jsonl, .parquet)
        -> clean_text, hash split (train only) -> batches -> encode_documents -> Chunk
  Chunk -> chunk_unigram_counts -> sum                          -> unigram_counts.npy
        -> chunk_pair_counts (PMI vocabulary as side input), cut into row blocks
           -> PairAccumulator per block -> finalize -> pmi_table   -> pmi.npz
        -> chunk_ngram_counts, keys cut into hash partitions
           -> KeyCounter per partition -> frequent n-grams and adjacent pairs
        -> one occurrence of each frequent n-gram (side input) -> score_ngrams over those
           occurrences -> assemble_vocab, bigram_table          -> pmi_ngrams.json, pmi_bigrams.json

Row blocks and hash partitions are keys, so the merges run in parallel (one combiner per key)
instead of on one worker. The masking-rate stage is not here: it runs the JAX masker on packed
training rows, which every training run builds anyway, so train.py (or `python -m
informask_jax.stats build --what=rates`) finishes it from these tables in minutes.

Exactness holds for any bundling, chunking and runner (counts are sums), with one caveat shared
with the local builder: two n-grams whose 64-bit keys collide count as one, and which of them
names the entry may differ (probability ~1e-5 at ten million distinct n-grams).
"""

# The package, one module per concern (the names callers use are all importable from here):
#   settings      BEAM_STAGES and `Settings`, the launcher's decisions that the workers read
#   documents     shards -> raw documents (the readers of `corpus`), cleaning, the hash split rule
#   combiners     Beam combiners around the merges of `counting` and `ngrams`
#   per_chunk     a batch of documents -> a `Chunk` -> its partial counts, keyed for the merges
#   whole_corpus  merged counts -> PMI vocabulary, pair table, PMI, n-gram counts and vocabulary
#   writing       write_artifacts: the directory, meta.json last, local or on a Beam file system
#   graph         build_pipeline: the modules above joined into the job graph drawn above
#   launch        config checks, the shard list, what the launcher decides, and `run`
#   __main__      the command line (its --help prints the docstring above)
#   beam_import   imports Apache Beam once, without its warning about BigQuery's client
# What a worker runs is defined at the top level of its module, so Beam pickles it by reference
# (workers import `informask_jax`).

# The private names (`_clean as _clean`, ...) are pieces that tests/test_beam.py checks one by one.
# A module attribute is looked up in the module that uses it: to replace one (as a test replaces
# FileSystems for write_artifacts), set it there (beam_pipeline.writing.FileSystems).
# First: Apache Beam imported with its BigQuery warning dropped (see beam_import).
from informask_jax.stats.beam_pipeline import beam_import as _beam_import  # noqa: F401
from informask_jax.stats.beam_pipeline.combiners import _ArraySum as _ArraySum
from informask_jax.stats.beam_pipeline.combiners import _KeySum as _KeySum
from informask_jax.stats.beam_pipeline.combiners import _PairSum as _PairSum
from informask_jax.stats.beam_pipeline.combiners import _SplitCounts as _SplitCounts
from informask_jax.stats.beam_pipeline.combiners import _UnigramSum as _UnigramSum
from informask_jax.stats.beam_pipeline.documents import SUFFIXES, read_documents
from informask_jax.stats.beam_pipeline.documents import _clean as _clean
from informask_jax.stats.beam_pipeline.documents import _is_validation as _is_validation
from informask_jax.stats.beam_pipeline.graph import build_pipeline
from informask_jax.stats.beam_pipeline.launch import _launch_state as _launch_state
from informask_jax.stats.beam_pipeline.launch import _text_field as _text_field
from informask_jax.stats.beam_pipeline.launch import check_config, list_files, run
from informask_jax.stats.beam_pipeline.settings import BEAM_STAGES, Settings
from informask_jax.stats.beam_pipeline.writing import write_artifacts

__all__ = [
    "BEAM_STAGES",
    "SUFFIXES",
    "Settings",
    "build_pipeline",
    "check_config",
    "list_files",
    "read_documents",
    "run",
    "write_artifacts",
]
