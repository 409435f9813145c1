"""AdamW with warm-up then linear or cosine decay, clipping and a weight-decay mask."""

import jax
import optax

# Parameters that get weight decay: matrices and embeddings. Biases and LayerNorm scales do not,
# as in BERT and RoBERTa.
_DECAYED_LEAVES = ("kernel", "embedding")


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  peak, warmup = optim_config.learning_rate, optim_config.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  if optim_config.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif optim_config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    raise ValueError(f"optim.schedule={optim_config.schedule!r}: expected 'linear' or 'cosine'.")
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
