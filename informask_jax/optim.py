"""AdamW with warm-up then linear or cosine decay, clipping and a weight-decay mask."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Parameters that get weight decay: matrices and embeddings. Biases and LayerNorm scales do not,
# as in BERT's optimizer and Hugging Face's run_mlm.py (fairseq's RoBERTa decayed every one).
_DECAYED_LEAVES = ("kernel", "embedding")


SCHEDULES = ("linear", "cosine")
# Step counts live in int32 on device (optax's schedule count, the train state's step).
MAX_STEPS = 2**31 - 1
# float32's smallest normal number. A positive epsilon, learning rate or clip norm below it is 0
# on the device (XLA:CPU flushes subnormals), which the plain > 0 bounds let through: a learning
# rate of 1e-39 gave zero updates, a clip norm of 1e-39 zeroed every gradient, and the run went
# on as if it trained.
FLOAT32_TINY = float(jnp.finfo(jnp.float32).tiny)
FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)  # 1e39 passed as finite, and is inf there.
IN_FLOAT32 = "in float32, which the device computes in (values above 0.99999997 round to 1)"


def check_config(o) -> None:
  """Rejects bad `config.optim` values, naming the key, before anything is built."""
  finite = math.isfinite  # inf passed the >= checks and left NaN parameters, every step skipped.
  def representable(x):  # A finite float32 the device does not flush to 0.
    return finite(x) and FLOAT32_TINY <= x <= FLOAT32_MAX

  def beta(x):  # 0.99999999 passed as below 1, but is 1.0 in float32: Adam's bias correction
    return 0 <= x and np.float32(x) < 1  # 1 - b**t was 0, and every parameter NaN.

  normal = f"{FLOAT32_TINY:.2g} (float32's smallest normal; the device computes a smaller one as 0)"
  checks = (("learning_rate", representable(o.learning_rate),
             f"must be a finite float32 number >= {normal}"),
            ("warmup_steps", 0 <= o.warmup_steps <= MAX_STEPS, "must be in [0, 2**31)"),
            ("weight_decay", finite(o.weight_decay) and 0 <= o.weight_decay <= FLOAT32_MAX,
             "must be a finite float32 number >= 0"),
            ("b1", beta(o.b1), f"must be in [0, 1) {IN_FLOAT32}"),
            ("b2", beta(o.b2), f"must be in [0, 1) {IN_FLOAT32}"),
            # An eps of 0 in float32 makes m / (sqrt(v) + eps) = 0 / 0 = NaN for every parameter
            # with a zero gradient (embedding rows of tokens absent from the batch), in a step
            # whose gradients are finite, so it is not skipped.
            ("eps", representable(o.eps), f"must be a finite float32 number >= {normal}"),
            ("grad_clip_norm",
             o.grad_clip_norm == 0 or representable(o.grad_clip_norm),
             f"must be 0 (no clipping) or a finite float32 number >= {normal}"),
            ("grad_accum_steps", o.grad_accum_steps >= 1, "must be >= 1"),
            ("schedule", o.schedule in SCHEDULES, f"must be one of {SCHEDULES}"))
  for key, ok, rule in checks:
    if not ok:
      raise ValueError(f"config.optim.{key}={o[key]!r} {rule}.")


def warn_if_warmup_outlasts_run(o, num_steps: int) -> None:
  """Warns when the warm-up does not end before step `num_steps`: the rate never reaches
  `o.learning_rate`, nor decays. Accepted (a short trial of a long recipe), but said: else the
  run looks like the recipe's."""
  if o.warmup_steps < num_steps:
    return
  # The last step, num_steps - 1, trains at the highest rate: the warm-up's line at that count.
  reached = o.learning_rate * (num_steps - 1) / o.warmup_steps
  logging.warning(
      "config.optim.warmup_steps=%d is not below config.train.num_steps=%d: the learning rate "
      "never reaches config.optim.learning_rate=%g (at most %.4g, %.0f%% of it, at the last "
      "step) and never decays; lower the warm-up or raise num_steps for the whole schedule.",
      o.warmup_steps, num_steps, o.learning_rate, reached,
      100 * reached / o.learning_rate)


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


def _unless_finite(finite, new, old):
  """`new` where the step is finite, else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def optax_apply_update(tx: optax.GradientTransformation):
  """`apply(params, opt_state, grads, grad_norm, finite) -> (params, opt_state)` through
  `tx.update`, for any optax transformation; unchanged where not `finite`."""
  def apply(params, opt_state, grads, grad_norm, finite):
    del grad_norm
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return (_unless_finite(finite, new_params, params),
            _unless_finite(finite, new_opt_state, opt_state))
  return apply


def make_apply_update(optim_config, schedule: optax.Schedule):
  """`apply(params, opt_state, grads, grad_norm, finite) -> (params, opt_state)`.

  One step of `make_optimizer`'s chain (global-norm clipping, AdamW, the schedule) on its own
  state, where `grad_norm` is the gradients' global norm; where `finite` is False, parameters and
  state are returned unchanged. The arithmetic is optax's (its moment, bias-correction and
  increment helpers, its order of operations), and the state keeps optax's layout, so checkpoints
  and `tx.update` stay interchangeable; test_optim checks several steps against
  `optax_apply_update(tx)`.

  Why not `tx.update` + `optax.apply_updates`: XLA:CPU does not fuse a leaf's three outputs
  (parameter, first and second moment) into one kernel. It recomputes each new moment inside the
  parameter's kernel from the old moment, which the moment's own in-place kernel overwrites, so it
  copies both moments first, and it materialises the clipped gradients and the updates. On the
  mini BERT (11M parameters) that update took 42 ms and 81 MB of per-step temporaries; here the
  new moments are written in place first and fenced (`optimization_barrier`), and the parameter
  kernel reads them: 10 ms, no temporaries (bench/RESULTS.md, train step). Where XLA does fuse
  a leaf's outputs (GPUs), the fence costs one more read of both moments: for BERT-base's 110M
  float32 parameters ~0.9 GB, about 0.3 ms at an H100's bandwidth.
  """
  clip, b1, b2, eps = (optim_config.grad_clip_norm, optim_config.b1, optim_config.b2,
                       optim_config.eps)
  weight_decay = optim_config.weight_decay

  def apply(params, opt_state, grads, grad_norm, finite):
    if clip > 0:
      clip_state, (adam, masked, lr_state) = opt_state
      trigger = grad_norm < clip  # optax.clip_by_global_norm, with the norm computed once.
      grads = jax.tree.map(lambda g: jax.lax.select(trigger, g, (g / grad_norm.astype(g.dtype))
                                                    * clip), grads)
    else:
      ((adam, masked, lr_state),) = opt_state
    mu = _unless_finite(finite, optax.tree.update_moment(grads, adam.mu, b1, 1), adam.mu)
    nu = _unless_finite(finite, optax.tree.update_moment_per_elem_norm(grads, adam.nu, b2, 2),
                        adam.nu)
    mu, nu = jax.lax.optimization_barrier((mu, nu))  # In place, before the parameters read them.
    count = optax.safe_increment(adam.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    step_size = -schedule(lr_state.count)
    decayed = weight_decay_mask(params)

    def new_param(p, m, v, decay):
      u = m / (jnp.sqrt(v + 0.0) + eps)  # scale_by_adam (eps_root = 0)
      if decay:
        u = u + weight_decay * p  # add_decayed_weights, masked
      u = u * step_size.astype(u.dtype)  # scale_by_learning_rate
      return jnp.where(finite, jnp.asarray(p + u).astype(p.dtype), p)

    params = jax.tree.map(new_param, params, mu_hat, nu_hat, decayed)
    adam = adam._replace(count=jnp.where(finite, count, adam.count), mu=mu, nu=nu)
    lr_state = lr_state._replace(
        count=jnp.where(finite, optax.safe_increment(lr_state.count), lr_state.count))
    inner = (adam, masked, lr_state)
    return params, ((clip_state, inner) if clip > 0 else (inner,))
  return apply
