"""AdamW with warm-up then linear or cosine decay, clipping and a weight-decay mask."""

import jax
import optax

# Parameters that get weight decay: matrices and embeddings. Biases and LayerNorm scales do not,
# as in BERT and RoBERTa.
_DECAYED_LEAVES = ("kernel", "embedding")


SCHEDULES = ("linear", "cosine")


def check_config(o) -> None:
  """Rejects bad `config.optim` values, naming the key, before anything is built."""
  checks = (("learning_rate", o.learning_rate > 0, "must be > 0"),
            ("warmup_steps", o.warmup_steps >= 0, "must be >= 0"),
            ("weight_decay", o.weight_decay >= 0, "must be >= 0"),
            ("b1", 0 <= o.b1 < 1, "must be in [0, 1)"), ("b2", 0 <= o.b2 < 1, "must be in [0, 1)"),
            ("eps", o.eps > 0, "must be > 0"),
            ("grad_clip_norm", o.grad_clip_norm >= 0, "must be >= 0 (0 disables clipping)"),
            ("grad_accum_steps", o.grad_accum_steps >= 1, "must be >= 1"),
            ("schedule", o.schedule in SCHEDULES, f"must be one of {SCHEDULES}"))
  for key, ok, rule in checks:
    if not ok:
      raise ValueError(f"config.optim.{key}={o[key]!r} {rule}.")


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  peak, warmup = optim_config.learning_rate, optim_config.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  if optim_config.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif optim_config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    raise ValueError(f"optim.schedule={optim_config.schedule!r}: expected one of {SCHEDULES}.")
  warm = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([warm, decay], [warmup])


def weight_decay_mask(params):
  """True for leaves named kernel/embedding; works on boxed or plain parameter trees."""
  def decayed(path, _):
    return any(getattr(k, "key", None) in _DECAYED_LEAVES for k in path)
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(optim_config, num_steps: int) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
  schedule = learning_rate_schedule(optim_config, num_steps)
  parts = []
  if optim_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                           eps=optim_config.eps, weight_decay=optim_config.weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts), schedule
