"""Tests of informask_jax.optim: the learning-rate schedules and where weight decay applies."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from informask_jax import model as model_lib
from informask_jax import optim


def _optim_config(schedule="linear", warmup=10):
  c = base.get_base_config("tiny").optim
  c.learning_rate, c.warmup_steps, c.schedule = 2e-3, warmup, schedule
  return c


@pytest.mark.parametrize("schedule,quarter", [("linear", 0.75), ("cosine", 0.8535534)])
def test_schedule_warms_up_then_decays_to_zero(schedule, quarter):
  fn = optim.learning_rate_schedule(_optim_config(schedule), num_steps=110)
  peak = 2e-3
  assert float(fn(0)) == 0.0
  assert float(fn(5)) == pytest.approx(peak / 2)  # Linear warm-up over 10 steps.
  assert float(fn(10)) == pytest.approx(peak)
  # 100 decay steps: a quarter of the way, linear is at 3/4 of the peak, cosine at
  # (1 + cos(pi / 4)) / 2 of it; half-way both are at 1/2; at the end both are at 0.
  assert float(fn(35)) == pytest.approx(quarter * peak, rel=1e-5)
  assert float(fn(60)) == pytest.approx(peak / 2, rel=1e-5)
  assert float(fn(110)) == pytest.approx(0.0, abs=1e-9)


def test_unknown_schedule_names_the_key():
  with pytest.raises(ValueError, match=r"optim.schedule='step'"):
    optim.learning_rate_schedule(_optim_config("step"), num_steps=10)


def test_weight_decay_on_matrices_and_embeddings_only():
  c = base.get_base_config("tiny")
  cfg = model_lib.MLMConfig.from_config(c.model, vocab_size=64, pad_id=0)
  params = model_lib.init_params(model_lib.BertMLM(cfg), jax.random.key(0), 16)
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  decayed = {jax.tree_util.keystr(path): flag for path, flag in
             jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params))}
  names = {path: path.rsplit("'", 2)[-2] for path in decayed}  # The leaf's own name.
  assert set(names.values()) >= {"kernel", "embedding", "bias", "scale"}
  for path, flag in decayed.items():
    assert flag == (names[path] in ("kernel", "embedding")), path

  # Through the optimizer: with zero gradients AdamW's only change is the decay.
  oc = _optim_config(warmup=1)
  oc.weight_decay = 0.1
  tx, _ = optim.make_optimizer(oc, num_steps=100)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = params
  for _ in range(2):
    updates, state = tx.update(zeros, state, new)
    new = optax.apply_updates(new, updates)
  for (path, old), changed in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree.leaves(new), strict=True):
    name = jax.tree_util.keystr(path)
    if decayed[name] and np.any(np.asarray(old) != 0):
      assert not np.allclose(changed, old), f"{name} was not decayed"
    else:
      np.testing.assert_array_equal(changed, old, err_msg=f"{name} was decayed")


@pytest.mark.parametrize("clip", [1.0, 0.25, 0.0])
def test_apply_update_matches_optax_chain(clip):
  """The in-place AdamW step equals the train step's generic optax path (tx.update +
  apply_updates) over steps that clip, do not clip, and are skipped (non-finite): parameters and
  the whole optimizer state, which keeps its layout. A clip other than 1.0: at 1.0, clipping to
  the configured norm and to norm 1 give the same numbers."""
  oc = _optim_config(warmup=3)
  oc.grad_clip_norm, oc.weight_decay, oc.b2 = clip, 0.1, 0.98
  tx, schedule = optim.make_optimizer(oc, num_steps=20)
  apply = jax.jit(optim.make_apply_update(oc, schedule))
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": rng.normal(size=(8, 4)), "bias": rng.normal(size=4)},
            "embed": {"embedding": rng.normal(size=(16, 8))}, "ln": {"scale": np.ones(8)}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)

  reference = jax.jit(optim.optax_apply_update(tx))  # tx.update + apply_updates + skip

  ours, ref = (params, tx.init(params)), (params, tx.init(params))
  # Global norms below and above the clip (~13 x the scale: 172 normal draws), then two steps
  # rescaled to 1.01 and 0.99 x the clip: the raw scales leave no norm within 1.5x of the clip, so
  # clipping from the wrong threshold (e.g. only from 1.5 x the clip on) went unseen.
  scales = [0.01, 5.0, float("nan"), 0.3, 20.0, 0.05, ("clip", 1.01), ("clip", 0.99)]
  for step, scale in enumerate(scales):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    if isinstance(scale, tuple):  # Relative to the clip (to 1 where clipping is off).
      scale = scale[1] * (clip or 1.0) / float(optax.tree.norm(grads))
    grads = jax.tree.map(lambda g, s=scale: g * jnp.float32(s), grads)
    norm = optax.tree.norm(grads)
    finite = jnp.isfinite(norm)
    ours = apply(*ours, grads, norm, finite)
    ref = reference(*ref, grads, norm, finite)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=f"step {step}")
  # The skipped step did not count: 5 applied steps of 6.
  assert int(ours[1][-1][0].count) == len(scales) - 1
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(ours[0]),
                                                  jax.tree.leaves(params), strict=True)]
  assert all(moved)


@pytest.mark.parametrize("key,bad,good", [
    ("b1", 1.0, 0.0), ("b2", 1.0, 0.0), ("b2", -0.1, 0.999), ("eps", 0.0, 1e-12),
    ("learning_rate", 0.0, 1e-9), ("warmup_steps", -1, 0), ("weight_decay", -0.01, 0.0),
    ("grad_clip_norm", -1.0, 0.0), ("grad_accum_steps", 0, 1), ("schedule", "step", "cosine"),
    # Infinite values passed the >= bounds and every step came out NaN (and skipped).
    ("learning_rate", float("inf"), 1e3), ("weight_decay", float("inf"), 10.0),
    ("eps", float("inf"), 1.0), ("grad_clip_norm", float("inf"), 1e6),
    ("b1", float("nan"), 0.9), ("warmup_steps", 2**31, 2**31 - 1),
    # A float32 subnormal eps is 0 on XLA:CPU (subnormals flushed): the bound is the smallest
    # normal, not > 0.
    ("eps", 1e-39, optim.FLOAT32_TINY),
    # The same for the learning rate (updates of 0) and a positive clip norm (gradients of 0).
    ("learning_rate", 1e-39, optim.FLOAT32_TINY), ("grad_clip_norm", 1e-39, optim.FLOAT32_TINY),
    ("grad_clip_norm", -1e-39, 0.0),
    # Below 1 in float64, 1.0 in float32: the bias correction 1 - b**t was 0 on the device, and
    # every parameter NaN.
    ("b2", 0.99999999, 0.99999997), ("b1", 0.99999999, 0.99999997),
    # Finite in float64, inf in float32.
    ("learning_rate", 1e39, optim.FLOAT32_MAX), ("weight_decay", 1e39, optim.FLOAT32_MAX)])
def test_check_config_bounds_are_where_adamw_breaks(key, bad, good):
  """Each bound at its edge: b = 1 never forgets (and divides by zero in the bias correction),
  eps = 0 divides by zero; grad_clip_norm = 0 is allowed (it turns clipping off)."""
  c = _optim_config()
  c[key] = good
  optim.check_config(c)
  c[key] = bad
  with pytest.raises(ValueError, match=f"config.optim.{key}="):
    optim.check_config(c)


@pytest.mark.parametrize("warmup,num_steps", [(40, 30), (30, 30)])
def test_a_warm_up_that_outlasts_the_run_is_named_with_the_rate_reached(warmup, num_steps,
                                                                        caplog):
  """warmup_steps >= num_steps was accepted silently: the rate never reaches its peak (at
  warmup == num_steps it stops one step short). The warning names both keys and the highest rate
  the schedule gives a step of the run; a warm-up that ends in time draws none."""
  c = _optim_config(warmup=warmup)
  rates = [float(optim.learning_rate_schedule(c, num_steps)(s)) for s in range(num_steps)]
  with caplog.at_level(logging.WARNING):
    optim.warn_if_warmup_outlasts_run(c, num_steps)
  assert (f"config.optim.warmup_steps={warmup} is not below config.train.num_steps={num_steps}: "
          f"the learning rate never reaches config.optim.learning_rate=0.002 (at most "
          f"{max(rates):.4g}, {100 * max(rates) / 2e-3:.0f}% of it, at the last step) and never "
          "decays") in caplog.text
  assert max(rates) == rates[-1] < 2e-3
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    optim.warn_if_warmup_outlasts_run(c, num_steps=warmup + 1)
  assert not caplog.records


def test_weight_decay_mask_is_the_same_on_boxed_parameters():
  """tx.init sees the boxed (logically partitioned) tree when the train state is built; the mask
  must pick the same leaves there as on the plain tree, whose leaf is not last in a boxed path."""
  cfg = model_lib.MLMConfig(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2,
                            mlp_size=24, max_positions=16)
  boxed = jax.eval_shape(lambda: model_lib.init_params(model_lib.BertMLM(cfg),
                                                       jax.random.key(0), 8))
  plain = jax.tree.leaves(optim.weight_decay_mask(nn.meta.unbox(boxed)))
  on_boxed = jax.tree.leaves(optim.weight_decay_mask(boxed))
  assert on_boxed == plain and any(plain) and not all(plain)
