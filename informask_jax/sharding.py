"""Device mesh and the mapping from logical axis names to NamedShardings.

The model names logical axes only ("embed", "heads", ...); `config.mesh.logical_axis_rules` maps
them to the mesh axes ("data", "fsdp", "tensor"). This module is the one place where the two meet.
"""

import logging
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every data-parallel axis.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves `config.mesh` (one axis may be -1: "the rest") against the device count."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  fill = [a for a, s in zip(MESH_AXES, sizes, strict=True) if s == -1]
  if len(fill) > 1:
    # config.mesh.data defaults to -1, so `--config.mesh.fsdp=-1` alone lands here.
    hint = (f" config.mesh.data defaults to -1: to let {fill[1]} take the rest, also pass "
            "--config.mesh.data=1." if fill[0] == "data" else " Give all but one of them a size.")
    raise ValueError(f"At most one of config.mesh.{{data,fsdp,tensor}} may be -1 (\"the rest\"); "
                     f"got -1 for {' and '.join(fill)}.{hint}")
  if any(s == 0 or s < -1 for s in sizes):
    given = dict(zip(MESH_AXES, sizes, strict=True))
    raise ValueError(f"config.mesh sizes must be positive or -1; got {given}.")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f"config.mesh: the fixed axes multiply to {known}, which does not divide the "
          f"{num_devices} available devices, so mesh.{fill[0]}=-1 cannot fill the rest.")
    sizes[MESH_AXES.index(fill[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh data x fsdp x tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)} "
        f"devices, but {num_devices} {'is' if num_devices == 1 else 'are'} available. Set one axis "
        "to -1 to fill the rest.")
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  if len(devices) == len(jax.devices()):
    # jax.make_mesh orders devices for the physical topology (ICI rings on TPU, NVLink on GPU).
    # Auto axes: shardings are propagated by the compiler (GSPMD), as pjit does.
    return jax.make_mesh(shape, MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(mesh_config, known=None) -> tuple[tuple[str, object], ...]:
  """The config's rules as flax expects them: (logical name, mesh axis | tuple | None).

  `known`: the logical names the model uses; a rule for another name (a typo such as "mpl")
  would shard nothing, silently.
  """
  rules = mesh_config.logical_axis_rules
  out = []
  earlier = {}  # logical name -> mesh axes of its rules so far
  for rule in rules if isinstance(rules, list | tuple) else [rules]:
    if not isinstance(rule, list | tuple) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.mesh.logical_axis_rules: {rule!r} is not a (logical name, mesh "
                       f"axes) pair; each rule maps a name to one of {MESH_AXES}, a tuple of "
                       "them, or None.")
    name, axes = rule[0], tuple(rule[1]) if isinstance(rule[1], list) else rule[1]
    if known is not None and name not in known:
      raise ValueError(f"config.mesh.logical_axis_rules: {name!r} is not a logical axis of the "
                       f"model, so its rule would apply to nothing; the model's are "
                       f"{', '.join(known)}.")
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"config.mesh.logical_axis_rules: {name!r} -> {axis!r} is not a mesh "
                         f"axis; use one of {MESH_AXES}, a tuple of them, or None.")
    _check_rule_axes(name, axes, earlier.setdefault(name, []))
    out.append((name, axes))
  if known is not None and "activation_batch" in known and "activation_batch" not in earlier:
    # Flax turns a logical name without a rule into None: the model's batch constraints then
    # replicate every activation, and each device computes the whole global batch, silently.
    raise ValueError(
        "config.mesh.logical_axis_rules has no rule for 'activation_batch' (the batch dimension "
        "of the model's activations), so they would be replicated: each device would compute the "
        "whole global batch (no data parallelism). Add ('activation_batch', ('data', 'fsdp')), "
        "as configs/base.py has, or ('activation_batch', None) to replicate them on purpose.")
  return tuple(out)


def _check_rule_axes(name: str, axes, earlier: list) -> None:
  """Refuses what JAX would reject only when the state is laid out (after the input pipeline is
  built), and a rule flax would never apply; `earlier`: the axes of the name's previous rules.

  Flax applies a name's first rule whose mesh axes no other dimension of the array holds, so a
  later rule for the same name is a fallback for when an earlier one's axes are taken: dead if it
  needs all of them too (an earlier None, needing none, always applies)."""
  rule = (name, axes)
  if isinstance(axes, tuple):
    if None in axes:
      raise ValueError(f"config.mesh.logical_axis_rules: {rule!r} has None inside its tuple; "
                       f"write None alone to replicate {name!r}, or list mesh axes only.")
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
      raise ValueError(f"config.mesh.logical_axis_rules: {rule!r} names mesh axis "
                       f"{', '.join(map(repr, repeated))} more than once; a dimension can be "
                       "split over each axis only once.")
  if axes in earlier:  # The same rule again (base rules plus one of them): flax's first applies.
    return
  needs = set(axes if isinstance(axes, tuple) else (axes,)) - {None}
  for before in earlier:
    if set(before if isinstance(before, tuple) else (before,)) - {None} <= needs:
      raise ValueError(f"config.mesh.logical_axis_rules: {rule!r} is never applied: the earlier "
                       f"rule {(name, before)!r} always takes {name!r} first. Remove one of "
                       "the two.")
  earlier.append(axes)


def _divisible_spec(spec: PartitionSpec, shape, mesh: Mesh) -> tuple[PartitionSpec, list]:
  """Drops mesh axes from dimensions they do not divide (those stay replicated); returns the
  spec and the dropped (dim, size, axes, devices).

  An odd vocabulary (bert-base-uncased has 30,522 rows) or few heads on a wide tensor axis should
  not stop a run; the cost is memory, not correctness.
  """
  dims, dropped = [], []
  for i, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = math.prod(mesh.shape[a] for a in names)
    if names and shape[i] % size:
      dropped.append((i, shape[i], names, size))
      axes = None
    dims.append(axes)
  return PartitionSpec(*dims), dropped


def _unboxed(abstract_boxed_state):
  """The values of a boxed abstract state, without nn.unbox, which would apply sharding
  constraints to abstract values."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x,
                      abstract_boxed_state, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def state_shardings(abstract_boxed_state, mesh: Mesh, rules):
  """NamedShardings for a (boxed, abstract) train state: logical names -> mesh axes."""
  logical_specs = nn.get_partition_spec(abstract_boxed_state)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  unboxed = _unboxed(abstract_boxed_state)
  replicated_dims = {}  # (dim size, mesh axes, devices) -> paths of the arrays concerned
  used_axes = set()

  def to_sharding(path, spec, leaf):
    spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
    spec, dropped = _divisible_spec(spec, leaf.shape, mesh)
    for i, size, names, devices in dropped:
      replicated_dims.setdefault((size, names, devices), []).append(
          f"{jax.tree_util.keystr(path)} dim {i}")
    used_axes.update(a for axes in spec if axes is not None
                     for a in (axes if isinstance(axes, tuple) else (axes,)))
    return NamedSharding(mesh, spec)

  out = jax.tree_util.tree_map_with_path(
      to_sharding, mesh_specs, unboxed,
      is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)
  # One line per kind of dimension, not one per array (the optimizer holds copies of each).
  for (size, names, devices), where in replicated_dims.items():
    logging.info("Not sharding dimensions of size %d over %s (%d devices, not a divisor; kept "
                 "replicated there) in %d arrays: %s%s.", size, "x".join(names), devices,
                 len(where), ", ".join(where[:3]), ", ..." if len(where) > 3 else "")
  _warn_idle_axes(mesh, used_axes, replicated_dims)
  return out


def _warn_idle_axes(mesh: Mesh, used_axes: set, replicated_dims: dict) -> None:
  """Warns of a parameter axis (fsdp, tensor) of size > 1 that splits no parameter: a warning,
  not an error, as the run is correct, only slower or larger than the mesh promises. (The data
  axis holds no parameters by design.)"""
  for axis in ("fsdp", "tensor"):
    size = mesh.shape[axis]
    if size == 1 or axis in used_axes:
      continue
    effect = ("each device holds every parameter whole and fsdp only splits the batch, as "
              "config.mesh.data would" if axis in BATCH_AXES else
              f"its {size} devices in each group repeat each other's work")
    dims = sorted({dim for dim, names, _ in replicated_dims if axis in names})
    if not dims:
      logging.warning("config.mesh.%s=%d shards no parameter, so %s: no rule of "
                      "config.mesh.logical_axis_rules sends a parameter dimension to %s. "
                      "Consider config.mesh.%s=1.", axis, size, effect, axis, axis)
      continue
    # Sizes a mesh of these devices can give the axis and that split every such dimension.
    fits = [d for d in range(2, mesh.size + 1)
            if mesh.size % d == 0 and all(dim % d == 0 for dim in dims)]
    logging.warning("config.mesh.%s=%d shards no parameter, so %s: the model dimensions it "
                    "would split (%s) are not multiples of %d. %s", axis, size, effect,
                    ", ".join(map(str, dims)), size,
                    f"Sizes that divide them and the {mesh.size} devices: "
                    f"{', '.join(map(str, fits))}." if fits else
                    f"No size above 1 divides them and the {mesh.size} devices: consider "
                    f"config.mesh.{axis}=1{_batch_caveat(axis)}.")


def _batch_caveat(axis: str) -> str:
  """A smaller tensor axis gives its devices to the batch axes, which the batch may not divide
  over: a resume of batch 32 on 3 devices is told to use tensor=3, whose warning then advised
  tensor=1, the layout the resume had refused."""
  if axis in BATCH_AXES:
    return ""
  return (", where the batch divides over the devices it would add to config.mesh.data (else "
          "this layout is the one that runs it)")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(global_batch: int, mesh: Mesh, micro_steps: int = 1, *,
                          resumed: bool = False) -> None:
  """The global batch must split evenly over hosts, data-parallel devices and micro-batches.
  `resumed`: the run resumes a checkpoint, whose batch size cannot change (its data position
  belongs to it), so the remedy named is a mesh or grad_accum_steps, not another batch size."""
  # First: the batch sizes suggested below assume a mesh that passes it (a suggested 16 was
  # then refused for a tensor axis across hosts).
  check_batch_shards_per_host(mesh)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  nearest = (_resume_remedy(global_batch, mesh, micro_steps) if resumed
             else _nearest_batch_sizes(global_batch, mesh, micro_steps))
  if global_batch % micro_steps:
    raise ValueError(f"config.train.batch_size={global_batch} is not divisible by "
                     f"config.optim.grad_accum_steps={micro_steps}. {nearest}")
  micro = global_batch // micro_steps
  if micro % shards:
    raise ValueError(
        f"The micro-batch of {micro} sequences (config.train.batch_size={global_batch} / "
        f"config.optim.grad_accum_steps={micro_steps}) does not divide over the {shards} "
        f"data-parallel devices (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}). "
        f"{nearest}")
  if global_batch % jax.process_count():
    raise ValueError(f"config.train.batch_size={global_batch} does not divide over "
                     f"{jax.process_count()} processes (hosts). {nearest}")


def _nearest_batch_sizes(global_batch: int, mesh: Mesh, micro_steps: int) -> str:
  """The batch sizes next to `global_batch` that pass check_batch_divisible's three tests."""
  step = math.lcm(micro_steps * mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count())
  below = global_batch // step * step
  sizes = [n for n in (below, below + step) if n > 0 and n != global_batch]
  return f"Nearest valid config.train.batch_size: {' or '.join(map(str, sizes))}."


def _resume_remedy(global_batch: int, mesh: Mesh, micro_steps: int) -> str:
  """What divides a resumed run's batch on this mesh's devices: fewer data-parallel devices (the
  rest on the tensor axis) or another grad_accum_steps; a run moved to another device count
  (a preempted job on a new allocation) meets this."""
  devices, shards = mesh.devices.size, mesh.shape["data"] * mesh.shape["fsdp"]
  text = (f"A resume keeps config.train.batch_size={global_batch} (the checkpoint's data "
          "position belongs to it)")
  if global_batch % jax.process_count():
    return text + f"; run it on a number of processes that divides {global_batch}."
  micro = global_batch // micro_steps if global_batch % micro_steps == 0 else 0
  fits = [d for d in range(1, devices + 1) if devices % d == 0 and micro and micro % d == 0
          and d % jax.process_count() == 0]
  remedies = []
  if fits:
    d = max(fits)
    remedies.append(f"--config.mesh.data={d} --config.mesh.fsdp=1 --config.mesh.tensor="
                    f"{devices // d} (data-parallel over {d} of the {devices} devices)")
  accum = [a for a in range(1, global_batch + 1)
           if global_batch % a == 0 and (global_batch // a) % shards == 0]
  if accum:
    remedies.append(f"--config.optim.grad_accum_steps="
                    f"{min(accum, key=lambda a: (abs(a - micro_steps), a))}")
  return text + (f": resume with {' or '.join(remedies)}." if remedies else ".")


def check_batch_shards_per_host(mesh: Mesh) -> None:
  """Each host loads its own rows, so the devices of one batch shard must be on one host."""
  devices = mesh.devices.reshape(mesh.shape["data"] * mesh.shape["fsdp"], -1)
  for shard in devices:
    if len({d.process_index for d in shard}) > 1:
      raise ValueError(
          f"mesh.tensor={mesh.shape['tensor']} spans several processes: the devices sharing a "
          f"batch shard must be on one host ({jax.local_device_count()} devices each here), "
          "because each host loads its own rows. Make mesh.tensor divide the devices per host.")


def device_memory_bytes(device) -> int | None:
  """What one device can hold: an accelerator's allocator limit; on the CPU the host's memory
  shared by its (possibly simulated) devices; None when unknown."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      return None
    return host // max(1, jax.local_device_count())
  return None


def _size(num_bytes: int) -> str:
  return (f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else
          f"{num_bytes / 2**20:.0f} MiB")


def check_state_fits(abstract_boxed_state, shardings) -> None:
  """Refuses a train state whose own shards (parameters, optimizer moments) already exceed one
  device's memory: the jitted init would fail deep in XLA, or, on a CPU, block in allocation
  (a hidden_size of 100,000 hung where signals could not stop it). Activations come on top, so
  passing says nothing about fitting; failing is certain."""
  abstract_state = _unboxed(abstract_boxed_state)
  leaves = jax.tree.leaves(abstract_state)
  specs = jax.tree.leaves(shardings)
  # A device of this process: asking another process's for its memory blocked the run.
  device = jax.local_devices()[0]
  per_device = sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, specs, strict=True) if hasattr(x, "shape"))
  limit = device_memory_bytes(device)
  if limit is not None and per_device > limit:
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))
    raise ValueError(
        f"The train state (parameters and optimizer moments) takes {_size(per_device)} per "
        f"device ({params:,} parameters), more than a device's {_size(limit)}. Use "
        "a smaller model (config.model.size, hidden_size, num_layers) or shard it over more "
        "devices (config.mesh.fsdp, config.mesh.tensor).")
