"""Train state and the pure, jitted steps: masking, forward, backward and update in one program.

`make_train_step` returns `train_step(state, batch, masker) -> (state, metrics)`. The batch holds
raw token ids (and sentence ids); masking runs inside the step on the accelerator, sharded with the
batch, so the same program serves 1 CPU, a GPU box or a pod. The masker is a jit argument, not a
closure: its tables (a PMI matrix for online InforMask) then live in device memory once instead of
being baked into the compiled program as constants. Metrics are sums and counts, left on device
until the loop logs them.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from informask_jax import model as model_lib
from informask_jax import optim
from informask_jax import sharding as sharding_lib

Masker = Callable[..., dict]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 (): updates applied or skipped so far == batches consumed.
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's root key; per-step keys are fold_in(rng, step).
  skipped: jax.Array  # int32 (): updates skipped for non-finite loss or gradients, in total.
  consecutive_skips: jax.Array  # int32 (): skipped in a row up to this step.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  max_predictions: int  # Target positions gathered per sequence (P).
  micro_steps: int = 1  # Gradient-accumulation micro-batches per step.


def gather_targets(mask: jax.Array, max_predictions: int) -> tuple[jax.Array, jax.Array]:
  """First P target positions of each row, in order, and their validity.

  mask: bool (B, L) -> positions int32 (B, P) (0 where unused), weights float32 (B, P).
  """
  length = mask.shape[-1]
  key = jnp.where(mask, jnp.arange(length, dtype=jnp.int32), length)  # Non-targets sort last.
  positions = jnp.sort(key, axis=-1)[:, :max_predictions]  # (B, P)
  valid = positions < length
  return jnp.where(valid, positions, 0), valid.astype(jnp.float32)


def _mlm_sums(model, params, inputs, positions, labels, weights, dropout_rng, deterministic):
  """Summed cross-entropy and correct predictions over the weighted target positions."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  logits = model.apply({"params": params}, inputs, masked_positions=positions,
                       deterministic=deterministic, rngs=rngs)  # (B, P, V) float32
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # (B, P)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  # where, not a product: a non-finite logit at an unused slot (0 weight) would make the sum NaN.
  return (jnp.where(weights > 0, nll, 0.0) * weights).sum(), (correct * weights).sum()


def _masked_targets(masker, rng, batch, max_predictions):
  """Applies the masking strategy and gathers the prediction targets."""
  masked = masker(rng, batch["token_ids"], sentence_ids=batch.get("sentence_ids"))
  positions, weights = gather_targets(masked["mask"], max_predictions)
  labels = jnp.take_along_axis(masked["labels"], positions, axis=1)
  labels = jnp.where(weights > 0, labels, 0)  # -100 outside targets; any valid id will do there.
  dropped = masked["mask"].sum() - weights.sum()  # Targets beyond max_predictions.
  return masked["input_ids"], positions, labels, weights, dropped


def _split_micro(x, micro_steps):
  """(B, ...) -> (A, B/A, ...) taking every A-th row, so each micro-batch spans all devices."""
  return x.reshape(x.shape[0] // micro_steps, micro_steps, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(model: model_lib.BertMLM, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, step_config: StepConfig, apply_update=None):
  """Builds the pure train step; `jit_train_step` compiles it with the shardings.

  `apply_update(params, opt_state, grads, grad_norm, finite) -> (params, opt_state)` applies the
  optimizer and leaves everything unchanged where not `finite`; default:
  `optim.optax_apply_update(tx)`.
  """
  apply_update = apply_update or optim.optax_apply_update(tx)

  def train_step(state: TrainState, batch: dict[str, jax.Array], masker: Masker):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    mask_key, dropout_key = jax.random.split(step_key)
    inputs, positions, labels, weights, dropped = _masked_targets(
        masker, mask_key, batch, step_config.max_predictions)

    grad_fn = jax.value_and_grad(
        lambda p, *a: _mlm_sums(model, p, *a, deterministic=False), has_aux=True)

    def accumulate(carry, micro):
      grads, loss_sum, correct_sum = carry
      index, micro_inputs = micro[0], micro[1:]
      (loss, correct), g = grad_fn(state.params, *micro_inputs,
                                   jax.random.fold_in(dropout_key, index))
      grads = jax.tree.map(jnp.add, grads, g)
      return (grads, loss_sum + loss, correct_sum + correct), None

    micro_batches = [_split_micro(x, step_config.micro_steps)
                     for x in (inputs, positions, labels, weights)]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, loss_sum, correct_sum), _ = jax.lax.scan(
        accumulate, (zeros, 0.0, 0.0),
        (jnp.arange(step_config.micro_steps), *micro_batches))

    # Normalise by the targets of the whole batch: accumulation equals one large batch, but for
    # dropout, drawn per micro-batch (one key per micro-step, not per example).
    num_targets = weights.sum()
    grads = jax.tree.map(lambda g: g / jnp.maximum(num_targets, 1.0), grad_sum)
    loss = loss_sum / jnp.maximum(num_targets, 1.0)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # A non-finite step leaves parameters and optimizer state exactly as they were.
    new_params, new_opt_state = apply_update(state.params, state.opt_state, grads, grad_norm,
                                             finite)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        skipped=state.skipped + skipped,
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1))
    metrics = {
        "loss_sum": jnp.where(finite, loss_sum, 0.0),
        "correct_sum": jnp.where(finite, correct_sum, 0.0),
        "num_targets": jnp.where(finite, num_targets, 0.0),
        "grad_norm": grad_norm,
        # The rate this step applied: skipped steps do not advance the optimizer's count.
        "learning_rate": schedule(state.step - state.skipped),
        "skipped": skipped,
        "consecutive_skips": new_state.consecutive_skips,
        "dropped_targets": dropped.astype(jnp.float32),
        "loss": loss,  # This step's loss, also when non-finite (then the step was skipped).
    }
    return new_state, metrics

  return train_step


def make_eval_step(model: model_lib.BertMLM, max_predictions: int, micro_steps: int = 1):
  """eval_step(params, batch, rng, masker) -> summed loss / correct / targets, without dropout.

  With `micro_steps` > 1 the forward passes run on micro-batches, as the train step's do, so an
  evaluation fits in memory wherever training does.
  """

  def eval_step(params, batch, rng, masker):
    inputs, positions, labels, weights, _ = _masked_targets(masker, rng, batch, max_predictions)

    def forward(carry, micro):
      loss_sum, correct_sum = _mlm_sums(model, params, *micro, None, deterministic=True)
      return (carry[0] + loss_sum, carry[1] + correct_sum), None

    micro_batches = [_split_micro(x, micro_steps) for x in (inputs, positions, labels, weights)]
    (loss_sum, correct_sum), _ = jax.lax.scan(forward, (0.0, 0.0), micro_batches)
    return {"loss_sum": loss_sum, "correct_sum": correct_sum, "num_targets": weights.sum()}

  return eval_step


def init_train_state(model: model_lib.BertMLM, tx: optax.GradientTransformation, seed: int,
                     seq_len: int, mesh, rules, params=None):
  """Sharded train state built in place: shapes first, then a jitted init with out_shardings.

  Returns (state, state_shardings). With `params` (e.g. imported from Hugging Face), those
  replace the random initialisation and the optimizer starts fresh around them.
  """
  root = jax.random.key(seed)

  def boxed_state(key):
    init_key, run_key = jax.random.split(key)
    boxed_params = model_lib.init_params(model, init_key, seq_len)
    return TrainState(step=jnp.zeros((), jnp.int32), params=boxed_params,
                      opt_state=tx.init(boxed_params), rng=jax.random.key_data(run_key),
                      skipped=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(boxed_state, root)
    shardings = sharding_lib.state_shardings(abstract, mesh, rules)
    sharding_lib.check_state_fits(abstract, shardings)
    if params is None:
      state = jax.jit(lambda k: nn.unbox(boxed_state(k)), out_shardings=shardings)(root)
    else:
      params = jax.device_put(params, shardings.params)

      def with_params(key, p):
        state = nn.unbox(boxed_state(key))
        return state.replace(params=p, opt_state=tx.init(p))

      state = jax.jit(with_params, out_shardings=shardings)(root, params)
  return state, shardings


class _BoundStep:
  """A jitted step with the masker bound as its last argument (placed on the devices once)."""

  def __init__(self, jitted, masker):
    self.jitted = jitted
    self.masker = masker

  def __call__(self, *args):
    return self.jitted(*args, self.masker)

  def lower(self, *args):
    return self.jitted.lower(*args, self.masker)


def _replicated_masker(masker, mesh):
  """The masker with its tables on every device of the mesh (they are small next to a model)."""
  replicated = sharding_lib.replicated(mesh)
  return jax.device_put(masker, replicated), jax.tree.map(lambda _: replicated, masker)


def jit_train_step(train_step, state_shardings, mesh, masker: Masker):
  """Compiles `train_step`; returns `step(state, batch) -> (state, metrics)` (state donated)."""
  masker, masker_sharding = _replicated_masker(masker, mesh)
  batch = sharding_lib.batch_sharding(mesh)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch, masker_sharding),
                   out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                   donate_argnums=(0,))
  return _BoundStep(jitted, masker)


def jit_eval_step(eval_step, state_shardings, mesh, masker: Masker):
  """Compiles `eval_step`; returns `step(params, batch, rng) -> summed metrics`."""
  masker, masker_sharding = _replicated_masker(masker, mesh)
  replicated = sharding_lib.replicated(mesh)
  jitted = jax.jit(eval_step, in_shardings=(state_shardings.params,
                                            sharding_lib.batch_sharding(mesh), replicated,
                                            masker_sharding),
                   out_shardings=replicated)
  return _BoundStep(jitted, masker)
