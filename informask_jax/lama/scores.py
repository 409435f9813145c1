"""Scores: per-relation sums of P@1, P@10 and reciprocal ranks (with what was skipped, and why),
their per-source summary (LAMA's macro average over relations) and its Markdown table."""

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from informask_jax.lama.data_files import SOURCES


@dataclasses.dataclass
class RelationScore:
  """Sums for one relation; metrics are divided out at the end."""

  source: str
  name: str
  facts: int = 0
  hits1: int = 0
  hits10: int = 0
  rr: float = 0.0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  scored_as_miss: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, rank: int | None):
    """Counts one scored fact; `rank` is 1-based, None when the gold is not found."""
    self.facts += 1
    if rank is not None:
      self.hits1 += rank == 1
      self.hits10 += rank <= 10
      self.rr += 1.0 / rank

  def as_dict(self) -> dict:
    n = self.facts
    return {"P@1": self.hits1 / n if n else None, "P@10": self.hits10 / n if n else None,
            "MRR": self.rr / n if n else None, "facts": n, "skipped": dict(sorted(
                self.skipped.items())), "scored_as_miss": dict(sorted(
                    self.scored_as_miss.items()))}


def summarize(scores: Sequence[RelationScore]) -> dict:
  """{SOURCE: {"P@1", "P@10", "MRR", "facts", "relations_scored", "skipped", "scored_as_miss",
  "relations"}}.

  A source's P@k and MRR are means over its relations that have facts (LAMA's macro average):
  `relations_scored` of them, of the `relations` read.
  """
  summary = {}
  for source in SOURCES:
    rels = [s for s in scores if s.source == source]
    if not rels:
      continue
    entries = {r.name: r.as_dict() for r in rels}
    used = [e for e in entries.values() if e["facts"]]
    skipped, missed = collections.Counter(), collections.Counter()
    for r in rels:
      skipped.update(r.skipped)
      missed.update(r.scored_as_miss)
    summary[source] = {
        **{k: float(np.mean([e[k] for e in used])) if used else None
           for k in ("P@1", "P@10", "MRR")},
        "facts": sum(e["facts"] for e in used), "relations_scored": len(used),
        "skipped": dict(sorted(skipped.items())),
        "scored_as_miss": dict(sorted(missed.items())), "relations": entries}
  return summary


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def markdown_table(summary: dict, missing: Sequence[str] = ()) -> str:
  lines = ["| Source | Relations | Facts | Skipped | P@1 (%) | P@10 (%) | MRR |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for source, s in summary.items():
    mrr = "-" if s["MRR"] is None else f"{s['MRR']:.4f}"
    # The means are over the relations with facts: "2 of 3" when one had none.
    scored, read = s["relations_scored"], len(s["relations"])
    relations = str(read) if scored == read else f"{scored} of {read}"
    lines.append(f"| {source} | {relations} | {s['facts']} | "
                 f"{sum(s['skipped'].values())} | {_pct(s['P@1'])} | {_pct(s['P@10'])} | {mrr} |")
  lines += [f"| {source} | not in data_dir | | | | | |" for source in missing]
  return "\n".join(lines)
