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

LOSS_SCALING = ("auto", "dynamic", "off")
# The step differentiates the SUM of the targets' cross-entropies, so each target's logit
# gradient is O(1) at scale 1: scale 1 on the sum is a scale of num_targets on a mean loss
# (~2**14 at 256 x 80 targets; GradScaler and jmp start a mean loss at 2**15-2**16 and halve from
# there). float16's risk here is overflow rather than underflow (a parameter gradient sums O(1)
# terms over every target of the step, past 65504 at ~20k), so start at 1 and let overflows halve.
LOSS_SCALE_INIT = 1.0
# At 2**-24 an O(1) gradient is float16's smallest subnormal: a lower scale flushes everything to
# zero, so halving stops there (and never reaches 0, which would make every gradient 0).
LOSS_SCALE_MIN = 2.0**-24
LOSS_SCALE_GROWTH_INTERVAL = 2000  # Finite steps in a row after which the scale doubles.


def uses_loss_scaling(loss_scaling: str, compute_dtype: str) -> bool:
  """config.train.loss_scaling: 'auto' scales only under float16 compute (bfloat16 has float32's
  range); 'dynamic' always; 'off' never."""
  return loss_scaling == "dynamic" or (loss_scaling == "auto" and compute_dtype == "float16")


@flax.struct.dataclass
class LossScale:
  """Dynamic loss scaling (as torch's GradScaler, jmp's DynamicLossScale): halved at every
  non-finite step, doubled after `growth_interval` finite steps in a row."""
  scale: jax.Array  # float32 (): the summed loss is multiplied by it before differentiating.
  good_steps: jax.Array  # int32 (): finite steps in a row since the scale last changed.

  @classmethod
  def create(cls, scale: float = LOSS_SCALE_INIT) -> "LossScale":
    return cls(scale=jnp.float32(scale), good_steps=jnp.int32(0))

  def update(self, finite: jax.Array, growth_interval: int) -> "LossScale":
    grow = finite & (self.good_steps + 1 >= growth_interval)
    doubled = self.scale * 2
    grown = jnp.where(jnp.isfinite(doubled), doubled, self.scale)  # An inf scale never halves back.
    scale = jnp.where(finite, jnp.where(grow, grown, self.scale),
                      jnp.maximum(self.scale / 2, LOSS_SCALE_MIN))
    return LossScale(scale=scale, good_steps=jnp.where(finite & ~grow, self.good_steps + 1, 0))


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 (): updates applied or skipped so far == batches consumed.
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's root key; per-step keys are fold_in(rng, step).
  skipped: jax.Array  # int32 (): updates skipped for non-finite loss or gradients, in total.
  # int32 (): skipped in a row up to this step; under loss scaling only those the scale cannot
  # explain (see make_train_step), since config.train.max_consecutive_skips stops the run.
  consecutive_skips: jax.Array


@flax.struct.dataclass
class ScaledTrainState(TrainState):
  """The train state under loss scaling. A class of its own, not a TrainState field that is None
  when off: orbax records a None as a node, which changed the layout of every run's checkpoints
  (those saved before would not restore)."""
  loss_scale: LossScale


@dataclasses.dataclass(frozen=True)
class StepConfig:
  max_predictions: int  # Target positions gathered per sequence (P).
  micro_steps: int = 1  # Gradient-accumulation micro-batches per step.
  # Under loss scaling (a ScaledTrainState): finite steps in a row before the scale doubles.
  growth_interval: int = LOSS_SCALE_GROWTH_INTERVAL


def gather_targets(mask: jax.Array, max_predictions: int) -> tuple[jax.Array, jax.Array]:
  """First P target positions of each row, in order, and their validity. Targets beyond P (the
  row's last: a Bernoulli budget over model.max_predictions) are dropped, counted by the loop.

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


def _gathered_per_micro_step(params, micro_steps: int):
  """Parameters for a micro-step's body, passed through the loop's carry: closed over they are
  loop-invariant, and XLA hoisted their fsdp all-gathers out of the loop, holding a gathered
  copy of every layer for the whole step (a parameter copy per device) where one layer's is
  due. The barrier keeps XLA from seeing through the carry. (One micro-step: no loop to leave.)
  """
  return jax.lax.optimization_barrier(params) if micro_steps > 1 else params


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

    # None: no loss scaling (a static choice, by the state's class).
    scaling = state.loss_scale if isinstance(state, ScaledTrainState) else None

    def scaled_sums(p, *a):
      loss, correct = _mlm_sums(model, p, *a, deterministic=False)
      return (loss if scaling is None else loss * scaling.scale), (loss, correct)

    grad_fn = jax.value_and_grad(scaled_sums, has_aux=True)

    def accumulate(carry, micro):
      params, grads, loss_sum, correct_sum = carry
      params = _gathered_per_micro_step(params, step_config.micro_steps)
      index, micro_inputs = micro[0], micro[1:]
      (_, (loss, correct)), g = grad_fn(params, *micro_inputs,
                                        jax.random.fold_in(dropout_key, index))
      grads = jax.tree.map(jnp.add, grads, g)
      return (params, grads, loss_sum + loss, correct_sum + correct), None

    micro_batches = [_split_micro(x, step_config.micro_steps)
                     for x in (inputs, positions, labels, weights)]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (_, grad_sum, loss_sum, correct_sum), _ = jax.lax.scan(
        accumulate, (state.params, zeros, 0.0, 0.0),
        (jnp.arange(step_config.micro_steps), *micro_batches))

    # Normalise by the targets of the whole batch: accumulation equals one large batch, but for
    # dropout, drawn per micro-batch (one key per micro-step, not per example).
    num_targets = weights.sum()
    if scaling is not None:  # Unscaled in float32 (the parameters' dtype), before normalising.
      grad_sum = jax.tree.map(lambda g: g / scaling.scale.astype(g.dtype), grad_sum)
    grads = jax.tree.map(lambda g: g / jnp.maximum(num_targets, 1.0), grad_sum)
    loss = loss_sum / jnp.maximum(num_targets, 1.0)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # A non-finite step leaves parameters and optimizer state exactly as they were.
    new_params, new_opt_state = apply_update(state.params, state.opt_state, grads, grad_norm,
                                             finite)
    skipped = (~finite).astype(jnp.int32)
    counted = ~finite
    if scaling is not None:
      # A finite loss with non-finite gradients is an overflow of the scaled backward pass while
      # the scale can still fall: not counted towards max_consecutive_skips (whose stop blames
      # the learning rate or the data) until the scale is at its floor. The scale acts on the
      # backward pass only, so a non-finite loss (the forward pass, a bad batch) counts at once.
      counted = counted & (~jnp.isfinite(loss) | (scaling.scale <= LOSS_SCALE_MIN))
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        skipped=state.skipped + skipped,
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + counted))
    if scaling is not None:
      new_state = new_state.replace(loss_scale=scaling.update(finite, step_config.growth_interval))
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
    if scaling is not None:
      metrics["loss_scale"] = scaling.scale  # The scale this step used.
    return new_state, metrics

  return train_step


def make_eval_step(model: model_lib.BertMLM, max_predictions: int, micro_steps: int = 1):
  """eval_step(params, batch, rng, masker) -> summed loss / correct / targets, without dropout,
  and the targets beyond `max_predictions` left out of them (a Bernoulli budget's tail).

  With `micro_steps` > 1 the forward passes run on micro-batches, as the train step's do, so an
  evaluation fits in memory wherever training does.
  """

  def eval_step(params, batch, rng, masker):
    inputs, positions, labels, weights, dropped = _masked_targets(masker, rng, batch,
                                                                  max_predictions)

    def forward(carry, micro):
      carried, loss_sum, correct_sum = carry
      carried = _gathered_per_micro_step(carried, micro_steps)
      loss, correct = _mlm_sums(model, carried, *micro, None, deterministic=True)
      return (carried, loss_sum + loss, correct_sum + correct), None

    micro_batches = [_split_micro(x, micro_steps) for x in (inputs, positions, labels, weights)]
    (_, loss_sum, correct_sum), _ = jax.lax.scan(forward, (params, 0.0, 0.0), micro_batches)
    return {"loss_sum": loss_sum, "correct_sum": correct_sum, "num_targets": weights.sum(),
            "dropped_targets": dropped.astype(jnp.float32)}

  return eval_step


def init_train_state(model: model_lib.BertMLM, tx: optax.GradientTransformation, seed: int,
                     seq_len: int, mesh, rules, params=None, loss_scale: float | None = None):
  """Sharded train state built in place: shapes first, then a jitted init with out_shardings.

  Returns (state, state_shardings). With `params` (e.g. imported from Hugging Face), those
  replace the random initialisation and the optimizer starts fresh around them. `loss_scale`:
  the initial scale of dynamic loss scaling (e.g. LOSS_SCALE_INIT); None: no loss scaling.
  """
  root = jax.random.key(seed)

  def boxed_state(key):
    init_key, run_key = jax.random.split(key)
    boxed_params = model_lib.init_params(model, init_key, seq_len)
    fields = dict(step=jnp.zeros((), jnp.int32), params=boxed_params,
                  opt_state=tx.init(boxed_params), rng=jax.random.key_data(run_key),
                  skipped=jnp.zeros((), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32))
    if loss_scale is None:
      return TrainState(**fields)
    return ScaledTrainState(**fields, loss_scale=LossScale.create(loss_scale))

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
  """The masker with its tables on every device of the mesh (they are small next to a model).
  A masker already replicated there is kept as is, so steps built from it share its tables."""
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
