"""LAMA factual-recall probe (Petroni et al., EMNLP 2019) for our masked language models.

Reads a directory laid out as LAMA's `data.zip`, turns each fact into a query with one mask,
runs a model (PyTorch through Hugging Face, or our jitted Flax `BertMLM`) and reports P@1, P@10
and MRR per relation and per source. Two protocols:

`lama` -- the paper's, as its released code computes it:
  * a fact is kept when its object is one token of the model's vocabulary (and, given a common
    vocabulary, one of its words; the ranking is then restricted to those words, as LAMA does);
  * T-REx and Google-RE queries are the relation template with the subject at [X] and the mask
    at [Y], each (subject, object) pair asked once, Google-RE facts that most annotators rejected
    left out; ConceptNet and SQuAD (and, on request, Google-RE) use their record's masked
    sentences, two of them as one sentence pair (segments A and B, as LAMA's BERT connector
    takes them; a record with more, which it refuses, is skipped), left out above 100 words in
    all; on request T-REx uses its first evidence's sentence; several [MASK] are scored at the
    first;
  * the gold token's rank among all (or the common) tokens gives P@1, P@10 and MRR; a source's
    score is the mean over its relations. MRR uses the exact rank, where LAMA's code gives 0
    beyond its top 1000 (later 5000) predictions: a difference below 0.001 per fact.

`informask` -- the evaluation of the InforMask repository, kept with its quirks so that numbers
can be compared with the ones it published:
  * the first evidence's masked sentence for T-REx, `masked_sentences[0]` elsewhere; the object's
    surface form lower-cased, commas separating alternatives; no filtering of objects;
  * the 30 most likely tokens, those in the word list (`common_vocab`) or among the gold
    alternatives kept in order; reciprocal rank of the first gold one, 0 when there is none;
  * sentences without [MASK] or over 500 tokens are left out; sentences with several [MASK]
    count as misses (the original's fill-mask call returns nested lists for them, which its
    filter drops), reported under `scored_as_miss`.

Everything that cannot be asked (bad JSON, missing fields, masks, multi-token objects, unknown
relations) is skipped and counted by reason; nothing in the data stops a run, unless no fact at
all is left to ask (then the error says why).

The package, one module per concern (their public names are all importable from here):
  data_files   the data.zip layout: sources, relation files, templates, records
  words        the tokenizer's view (`WordTable`) and the common word list
  queries      facts -> queries under each protocol, then token ids with the mask's position
  ranking      the model run over batches, and the gold answer's rank under each protocol
  scores       per-relation sums, the per-source summary and its Markdown table
  models       checks of what --model names, and its tokenizer
  backends     the model as (ids, positions) -> logits: PyTorch or our jitted Flax model
  evaluation   `evaluate`: the whole run, from the flags to the files written to --out
"""

from informask_jax.lama.backends import (
    BACKENDS,
    FlaxBackend,
    TorchBackend,
    check_device,
    load_backend,
)
from informask_jax.lama.data_files import (
    GOOGLE_RE_TEMPLATES,
    OBJECT_SLOT,
    SOURCES,
    SUBJECT_SLOT,
    RelationFile,
    discover,
    read_records,
    read_relation_templates,
)
from informask_jax.lama.evaluation import PROTOCOLS, OutputError, Report, evaluate, write_outputs
from informask_jax.lama.models import check_model, check_model_path, is_workdir, load_tokenizer
from informask_jax.lama.queries import (
    INFORMASK_MAX_TOKENS,
    LAMA_MASK,
    MAX_SENTENCE_WORDS,
    Encoded,
    Query,
    encode_queries,
    informask_queries,
    lama_queries,
)
from informask_jax.lama.ranking import INFORMASK_TOP_K, informask_ranks, lama_ranks, run_queries
from informask_jax.lama.scores import RelationScore, markdown_table, summarize
from informask_jax.lama.words import WordTable, read_word_list

__all__ = [
    "BACKENDS",
    "GOOGLE_RE_TEMPLATES",
    "INFORMASK_MAX_TOKENS",
    "INFORMASK_TOP_K",
    "LAMA_MASK",
    "MAX_SENTENCE_WORDS",
    "OBJECT_SLOT",
    "PROTOCOLS",
    "SOURCES",
    "SUBJECT_SLOT",
    "Encoded",
    "FlaxBackend",
    "check_device",
    "OutputError",
    "Query",
    "RelationFile",
    "RelationScore",
    "Report",
    "TorchBackend",
    "WordTable",
    "check_model",
    "check_model_path",
    "discover",
    "encode_queries",
    "evaluate",
    "informask_queries",
    "informask_ranks",
    "is_workdir",
    "lama_queries",
    "lama_ranks",
    "load_backend",
    "load_tokenizer",
    "markdown_table",
    "read_records",
    "read_relation_templates",
    "read_word_list",
    "run_queries",
    "summarize",
    "write_outputs",
]
