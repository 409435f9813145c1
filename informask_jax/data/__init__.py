"""Input pipeline: corpus -> sentence-aware tokens -> packed sequences -> host slices -> jax.Arrays.

  corpus.load_corpus        documents, "train" / "validation"
  tokenize_corpus           per document: "input_ids" and "sentence_ids" (no special tokens),
                            cached on disk by corpus, tokenizer and splitter version
  pack_sequences            token_ids / sentence_ids int32[N, L] rows "[CLS] ... [SEP] [PAD]*"
  BatchIterator             shuffled per epoch from (seed, epoch); each host takes its slice of
                            every global batch; a small state() resumes at the exact next batch
  prefetch                  turns local batches into global jax.Arrays, a few batches ahead

Sentence ids in packed rows are -1 on [CLS] / [SEP] / [PAD] and otherwise number the sentence
pieces of a row 0, 1, 2, ... so two tokens are in the same sentence iff their ids are equal and
>= 0 (the PMI statistics and InforMask's scoring look inside sentences only).

Streaming corpora (a hub source with streaming=True) are never materialised: the training rows are
tokenized and packed on the fly, a chunk of documents at a time, by `StreamingBatchIterator`, which
has the same state()/restore() contract.

The package, one module per concern (their public names are importable from here, except the
helpers the modules share among themselves, such as packing.check_packing):
  sentences       sentence splitting; documents -> "input_ids" / "sentence_ids", cached on disk
  packing         tokenized documents -> packed rows of seq_len tokens
  batches         host slices of in-memory rows: BatchIterator (resumable) and eval_batches
  iterator_state  checks of a saved iterator state on restore, and their errors
  global_batches  host batches -> global jax.Arrays, prefetched
  streaming       StreamingBatchIterator: a streaming corpus packed on the fly
  pipeline        InputPipeline and build_input_pipeline: all of the above for a config
"""

# A constant is read in the module that defines it: to change one (as a test does), set it there
# (e.g. data.sentences.PARALLEL_MIN_DOCUMENTS); the copy bound here is not looked up.
from informask_jax.data.batches import BatchIterator, eval_batches
from informask_jax.data.global_batches import Prefetcher, make_global_batch, prefetch
from informask_jax.data.iterator_state import DataSettingsChanged, IteratorStateError, TooFewRows
from informask_jax.data.packing import (
    PACKING_MODES,
    flatten_tokenized,
    pack_sequences,
    unpack_tokens,
)
from informask_jax.data.pipeline import (
    NONE_HELD_OUT,
    STREAM_VALIDATION_DOCUMENTS,
    InputPipeline,
    build_input_pipeline,
    check_config,
    max_sequence_length,
    stream_settings_part,
)
from informask_jax.data.sentences import (
    PARALLEL_MIN_DOCUMENTS,
    TOKENIZED_FORMAT,
    corpus_backend,
    encode_documents,
    plain_backend,
    split_sentences,
    tokenize_corpus,
    tokenized_cache_key,
)
from informask_jax.data.streaming import StreamingBatchIterator

__all__ = [
    "PACKING_MODES",
    "PARALLEL_MIN_DOCUMENTS",
    "NONE_HELD_OUT",
    "STREAM_VALIDATION_DOCUMENTS",
    "TOKENIZED_FORMAT",
    "BatchIterator",
    "DataSettingsChanged",
    "InputPipeline",
    "IteratorStateError",
    "Prefetcher",
    "StreamingBatchIterator",
    "TooFewRows",
    "build_input_pipeline",
    "check_config",
    "stream_settings_part",
    "encode_documents",
    "corpus_backend",
    "plain_backend",
    "eval_batches",
    "flatten_tokenized",
    "make_global_batch",
    "max_sequence_length",
    "pack_sequences",
    "prefetch",
    "split_sentences",
    "tokenize_corpus",
    "tokenized_cache_key",
    "unpack_tokens",
]
