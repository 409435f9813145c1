"""sharding: the checks that size a run to its devices and hosts (the layouts themselves are
tested with the train step in test_trainer.py)."""

import logging
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from informask_jax import sharding as sharding_lib
from tests.test_trainer import _mesh_config


def _mesh(data, fsdp, tensor):
  return sharding_lib.make_mesh(_mesh_config(data, fsdp, tensor))


def test_a_device_holds_its_allocators_limit_or_its_share_of_the_hosts_memory(monkeypatch):
  """On a CPU the simulated devices share the host's memory: each may hold 1/8 of it with 8,
  else check_state_fits let a state 8 times too large through to an allocation that hung."""
  gpu = types.SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 80 * 2**30})
  assert sharding_lib.device_memory_bytes(gpu) == 80 * 2**30
  pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**20}  # 4 GiB.
  monkeypatch.setattr(sharding_lib.os, "sysconf", pages.__getitem__)
  monkeypatch.setattr(sharding_lib.jax, "local_device_count", lambda: 8)
  cpu = types.SimpleNamespace(platform="cpu", memory_stats=lambda: None)
  assert sharding_lib.device_memory_bytes(cpu) == 2**29
  assert sharding_lib.device_memory_bytes(types.SimpleNamespace(platform="tpu")) is None


def test_a_batch_that_does_not_divide_over_the_hosts_is_refused(monkeypatch):
  """Each host loads batch_size / hosts rows: 40 rows split over 8 devices but not over 3
  hosts; the nearest valid sizes are multiples of both (not 48 alone, the next multiple of 8)."""
  mesh = _mesh(8, 1, 1)
  monkeypatch.setattr(sharding_lib.jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"config.train.batch_size=40 does not divide over 3 "
                                       r"processes \(hosts\)\. Nearest valid "
                                       r"config.train.batch_size: 24 or 48\.$"):
    sharding_lib.check_batch_divisible(40, mesh)
  sharding_lib.check_batch_divisible(24, mesh)


def test_rules_without_activation_batch_are_refused_for_the_model():
  """A rules list that left out activation_batch replicated every activation: each device
  computed the whole global batch (127 activations of [32, 128, 128] per device on 8 data
  devices instead of [4, 128, 128]), with correct losses and no word."""
  from informask_jax import model as model_lib
  config = types.SimpleNamespace(logical_axis_rules=[("embed", "fsdp"), ("mlp", "tensor")])
  with pytest.raises(ValueError, match=r"no rule for 'activation_batch' .* each device would "
                                       r"compute the whole global batch"):
    sharding_lib.logical_rules(config, known=model_lib.LOGICAL_AXES)
  config.logical_axis_rules.append(("activation_batch", None))  # On purpose: taken.
  assert sharding_lib.logical_rules(config, known=model_lib.LOGICAL_AXES)[-1] == (
      "activation_batch", None)


def test_a_rule_over_the_same_mesh_axes_in_another_order_is_never_applied():
  """("mlp", ("tensor", "fsdp")) after ("mlp", ("fsdp", "tensor")) needs the same axes, so it
  can never be the fallback it looks like: refused, as flax would silently skip it."""
  config = types.SimpleNamespace(logical_axis_rules=[("mlp", ("fsdp", "tensor")),
                                                     ("mlp", ("tensor", "fsdp"))])
  with pytest.raises(ValueError, match=r"\('mlp', \('tensor', 'fsdp'\)\) is never applied"):
    sharding_lib.logical_rules(config)


def test_an_idle_axis_warning_names_only_the_dimensions_that_axis_dropped(caplog):
  """tensor=4 splits none of its 6-wide "mlp" dimensions, while fsdp=2 drops an odd vocabulary
  of 5 but splits "embed": the warning for tensor sizes itself by the 6 alone (2 fits); with the
  5 counted as well no size would, and the advice would be to give tensor up."""
  mesh = _mesh(1, 2, 4)
  rules = (("mlp", "tensor"), ("embed", "fsdp"), ("vocab", "fsdp"))
  tree = {"mlp": nn.Partitioned(jax.ShapeDtypeStruct((6, 8), jnp.float32), names=("mlp", "embed")),
          "vocab": nn.Partitioned(jax.ShapeDtypeStruct((5,), jnp.float32), names=("vocab",))}
  with caplog.at_level(logging.INFO):
    sharding_lib.state_shardings(tree, mesh, rules)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ["config.mesh.tensor=4 shards no parameter, so its 4 devices in each group "
                      "repeat each other's work: the model dimensions it would split (6) are not "
                      "multiples of 4. Sizes that divide them and the 8 devices: 2."], warnings
