"""Random bits for the maskers: one threefry fold-in per example, then a cheap counter hash.

JAX's default threefry costs ~7 ns per 32-bit word on a CPU, more than the rest of the masking
together. So each example's key is derived the documented way (`fold_in(rng, global_index)`,
threefry, B hashes per batch) and its 64 key bits then seed a counter-based generator in the
style of SplitMix: word `c` of stream `s` is mix32((seed0 + ((s << 20) | c) * golden) ^ seed1),
mix32 being the "lowbias32" integer mixer (two multiplies, three xor-shifts; a bijection on 32
bits with full avalanche). Masking needs uniform, independent-looking bits, not cryptographic
strength.

The words depend only on (rng, global example index, stream, position), never on how the batch
is split over devices, so the masks are the same on 1 device, 8 devices or a pod.
"""

import jax
import jax.numpy as jnp
import numpy as np

MAX_COUNTER_BITS = 20  # Up to 2**20 words per stream and example (e.g. K * L candidate keys).
MAX_STREAMS = 1 << (32 - MAX_COUNTER_BITS)

# Streams: fixed names so strategies never reuse one another's bits by accident.
SELECT = 0  # Selection keys / uniforms for targets.
DECIDE = 1  # [MASK] / random / keep decision of each target.
REPLACE = 2  # The random replacement token.
UNITS = 3  # Unit keys (words, spans, PMI units).
LENGTHS = 4  # Span lengths.
CANDIDATES = 16  # informask_online: candidate k uses stream CANDIDATES + k.

_MUL1 = np.uint32(0x7FEB352D)
_MUL2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / golden ratio, odd: the Weyl increment


def mix32(x):
  """lowbias32: a bijection on uint32 with strong avalanche (works on jnp and np arrays)."""
  x = x ^ (x >> np.uint32(16))
  x = x * _MUL1
  x = x ^ (x >> np.uint32(15))
  x = x * _MUL2
  return x ^ (x >> np.uint32(16))


def example_seeds(rng, batch):
  """Per-example seeds uint32[batch, 2]: `fold_in(rng, i)` for the global index i, as key data.

  `rng` may be a typed key (`jax.random.key`, any impl) or a raw uint32[2] key.
  """
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
  if rng.shape != ():
    raise ValueError(f"The masker takes one key for the whole batch, got keys {rng.shape}.")
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch, dtype=jnp.uint32))
  data = jax.random.key_data(keys).reshape(batch, -1)  # (B, W): W = 2 (threefry), 4 (rbg)
  s0, s1 = data[:, 0], data[:, 1 % data.shape[1]]
  for w in range(2, data.shape[1]):  # Wider key impls: fold the extra words in.
    if w % 2:
      s1 = mix32(s1 ^ data[:, w])
    else:
      s0 = mix32(s0 ^ data[:, w])
  return jnp.stack([s0, s1], axis=-1)


def bits(seed, stream, shape):
  """uint32 words of one example's `stream`; seed uint32[2]; deterministic in (seed, stream)."""
  n = int(np.prod(shape))
  if n > (1 << MAX_COUNTER_BITS) or not 0 <= stream < MAX_STREAMS:
    raise ValueError(f"bits: {n} words of stream {stream} exceed the counter layout.")
  counter = jnp.arange(n, dtype=jnp.uint32) | jnp.uint32(stream << MAX_COUNTER_BITS)
  # SplitMix-style: a Weyl sequence offset by the seed, then one keyed mixing round.
  return mix32((seed[0] + counter * _GOLDEN) ^ seed[1]).reshape(shape)


def uniform(words):
  """Floats in (0, 1) from the top 24 bits of uint32 words (never exactly 0 or 1)."""
  return ((words >> 8).astype(jnp.float32) + 0.5) * np.float32(1.0 / (1 << 24))
