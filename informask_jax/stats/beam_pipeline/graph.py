"""The job graph: the transforms of `documents`, `per_chunk`, `combiners` and `whole_corpus`
joined, one branch per stage asked for (drawn in the package docstring)."""

from __future__ import annotations

from informask_jax.stats import counting
from informask_jax.stats.beam_pipeline.combiners import (
    _ArraySum,
    _KeySum,
    _PairSum,
    _SplitCounts,
    _UnigramSum,
)
from informask_jax.stats.beam_pipeline.documents import _clean, _is_validation, read_documents
from informask_jax.stats.beam_pipeline.per_chunk import (
    _examples,
    _ngram_parts,
    _pair_blocks,
    _Tokenize,
)
from informask_jax.stats.beam_pipeline.settings import BEAM_STAGES, Settings
from informask_jax.stats.beam_pipeline.whole_corpus import (
    _candidates,
    _join_pair_blocks,
    _ngram_counts,
    _ngram_vocab,
    _pmi,
    _pmi_vocab,
    _some_tokens,
)

try:  # Optional dependency: `pip install -e ".[beam]"`.
  import apache_beam as beam
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = None


def build_pipeline(p, files: list[str], settings: Settings, tokenizer_json: str, *,
                   what=BEAM_STAGES):
  """Adds the statistics transforms to pipeline `p`; returns the PCollections of the results
  ({"unigrams", "pairs", "pmi", "ngram_vocab"}, singletons, those `what` asks for)."""
  side = beam.pvalue.AsSingleton
  fraction = settings.validation_fraction
  docs = (p | "Shards" >> beam.Create(files)
          | "SpreadShards" >> beam.Reshuffle()
          | "Read" >> beam.FlatMap(read_documents, settings.text_field)
          | "Clean" >> beam.Map(_clean)
          | "DropEmpty" >> beam.Filter(lambda d: d is not None))
  split = (docs | "Buckets" >> beam.Map(lambda d: d[1])
           | "SplitCounts" >> beam.CombineGlobally(_SplitCounts(fraction)))
  chunks = (docs
            | "TrainSplit" >> beam.Filter(lambda d, s: not _is_validation(d[1], s, fraction),
                                          side(split))
            | "Text" >> beam.Map(lambda d: d[0])
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=settings.batch_chars,
                                            element_size_fn=len)
            | "Tokenize" >> beam.ParDo(_Tokenize(tokenizer_json)))
  out = {}
  if "counts" in what or "pmi" in what:
    out["unigrams"] = (chunks
                       | "Unigrams" >> beam.Map(counting.chunk_unigram_counts, settings.vocab_size)
                       | "SumUnigrams" >> beam.CombineGlobally(_UnigramSum(settings.vocab_size))
                       | "SomeTokens" >> beam.Map(_some_tokens))
  if "pmi" in what:
    vocab_ids = out["unigrams"] | "PmiVocab" >> beam.Map(_pmi_vocab, settings)
    blocks = (chunks
              | "PairBlocks" >> beam.FlatMap(_pair_blocks, side(vocab_ids), settings)
              | "SumPairs" >> beam.CombinePerKey(_PairSum(int(settings.stats["min_pair_count"])))
              | "PairBlockList" >> beam.combiners.ToList())
    out["pairs"] = blocks | "JoinPairs" >> beam.Map(_join_pair_blocks, side(vocab_ids),
                                                    side(out["unigrams"]), settings)
    out["pmi"] = out["pairs"] | "Pmi" >> beam.Map(_pmi, settings)
  if "ngrams" in what:
    min_count = int(settings.stats["ngram_min_count"])
    parts = chunks | "NgramParts" >> beam.FlatMap(_ngram_parts, settings).with_outputs(
        "totals", main="keys")
    totals = parts.totals | "SumTotals" >> beam.CombineGlobally(_ArraySum())
    frequent = (parts.keys
                | "SumKeys" >> beam.CombinePerKey(_KeySum(min_count))
                | "KeyPartList" >> beam.combiners.ToList())
    counts = frequent | "NgramCounts" >> beam.Map(_ngram_counts, side(totals), settings)
    candidates = counts | "Candidates" >> beam.Map(_candidates)
    examples = (chunks
                | "Examples" >> beam.FlatMap(_examples, side(candidates), settings)
                | "OneExample" >> beam.CombinePerKey(min)
                | "ExampleTokens" >> beam.Values()
                | "ExampleList" >> beam.combiners.ToList())
    out["ngram_vocab"] = examples | "NgramVocab" >> beam.Map(_ngram_vocab, side(counts), settings)
  return out
