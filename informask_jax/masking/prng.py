"""Random bits for the maskers (and the model's dropout): a cheap counter hash.

JAX's default threefry costs ~7 ns per 32-bit word on a CPU, more than the rest of the masking
together. So the step key's bits and each example's global index are hashed into a 64-bit
per-example seed, which drives a counter-based generator in the style of SplitMix: word `c` of
stream `s` is mix32((seed0 + ((s << 20) | c) * golden) ^ seed1), mix32 being the "lowbias32"
integer mixer (two multiplies, three xor-shifts; a bijection on 32 bits with full avalanche).
Masking needs uniform, independent-looking bits, not cryptographic strength.

The words depend only on (rng, global example index, stream, position), never on how the batch
is split over devices, so the masks are the same on 1 device, 8 devices or a pod.
"""

import math

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
CANDIDATES = 16  # informask_online: the K candidates' keys, K * L words of one stream.

_MUL1 = np.uint32(0x7FEB352D)
_MUL2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / golden ratio, odd: the Weyl increment
_OFFSET = np.uint32(0x6A09E667)  # Any odd constant (the fractional part of sqrt(2)).


def mix32(x):
  """lowbias32: a bijection on uint32 with strong avalanche (works on jnp and np arrays)."""
  x = x ^ (x >> np.uint32(16))
  x = x * _MUL1
  x = x ^ (x >> np.uint32(15))
  x = x * _MUL2
  return x ^ (x >> np.uint32(16))


def key_words(rng):
  """Two uint32 words from a typed key (any impl) or a raw uint32[2] key."""
  if not hasattr(rng, "dtype"):  # A Python int or None: say what a key is, not AttributeError.
    raise ValueError(f"Expected a JAX key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
                     f"got {type(rng).__name__} {rng!r}.")
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    data = jax.random.key_data(rng).reshape(-1)  # 2 words (threefry) or 4 (rbg)
  else:
    if not jnp.issubdtype(rng.dtype, jnp.integer):  # A float array cast to 0s: key 0, silently.
      raise ValueError(f"A raw key must be uint32[2] (jax.random.PRNGKey), got dtype {rng.dtype}.")
    data = jnp.asarray(rng, jnp.uint32)
    if data.shape != (2,):
      raise ValueError(f"A raw key must be uint32[2] (jax.random.PRNGKey), got {data.shape}.")
  k0, k1 = data[0], data[1]
  for w in range(2, data.shape[0]):  # Wider key impls: fold the extra words in.
    k0, k1 = (mix32(k0 ^ data[w]), k1) if w % 2 == 0 else (k0, mix32(k1 ^ data[w]))
  return k0, k1


def example_seeds(rng, batch, offset=0):
  """Per-example seeds uint32[batch, 2]: the global example index (offset + row) folded into
  `rng`; `offset`: the global index of the first row, when the rows are a slice of the batch.

  `rng` may be a typed key (`jax.random.key`, any impl) or a raw uint32[2] key. The fold is the
  counter hash below rather than `jax.random.fold_in`, whose threefry rounds run as a rolled loop
  on XLA:CPU and cost more than the whole masking of a small batch.
  """
  if hasattr(rng, "dtype") and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape != ():
    raise ValueError(f"The masker takes one key for the whole batch, got keys {rng.shape}.")
  k0, k1 = key_words(rng)
  # The global example index (under jit B is the global batch, the offset 0).
  index = jnp.arange(batch, dtype=jnp.uint32) + jnp.asarray(offset).astype(jnp.uint32)
  # The odd offset: mix32(0) == 0, so key 0 would otherwise give example 0 the seed (0, 0).
  s0 = mix32((index * _GOLDEN + _OFFSET) ^ k0)
  s1 = mix32(s0 + k1)
  return jnp.stack([s0, mix32(s1 ^ k0)], axis=-1)  # (B, 2)


def bits(seed, stream, shape):
  """uint32 words of one example's `stream`; seed uint32[2]; deterministic in (seed, stream)."""
  n = int(np.prod(shape))
  if n > (1 << MAX_COUNTER_BITS) or not 0 <= stream < MAX_STREAMS:
    raise ValueError(f"bits: {n} words of stream {stream} exceed the counter layout.")
  counter = jnp.arange(n, dtype=jnp.uint32) | jnp.uint32(stream << MAX_COUNTER_BITS)
  # SplitMix-style: a Weyl sequence offset by the seed, then one keyed mixing round.
  return mix32((seed[0] + counter * _GOLDEN) ^ seed[1]).reshape(shape)


def uniform(words):
  """Floats in (0, 1) from the top 23 bits of uint32 words (never exactly 0 or 1: k + 0.5 is
  exact in float32 for k < 2**23, not above, where the top value would round to 1)."""
  return ((words >> 9).astype(jnp.float32) + 0.5) * np.float32(1.0 / (1 << 23))


def below(words, n):
  """Integers in [0, n) from uint32 words: floor(word * n / 2**32), the high half of the 64-bit
  product (Lemire's multiply-shift) computed in 16-bit limbs, since uint64 needs jax_enable_x64.
  Each value takes floor(2**32 / n) or one more of the 2**32 words: uniform to 1 part in
  2**32 / n (a 23-bit float uniform times n is off by 3.6% between ids at n = 250k and never
  reaches some ids above n = 2**23)."""
  if not 1 <= n < 1 << 32:
    raise ValueError(f"below: n={n} outside [1, 2**32).")
  lo16 = np.uint32(0xFFFF)
  w_lo, w_hi = words & lo16, words >> np.uint32(16)
  n_lo, n_hi = np.uint32(n & 0xFFFF), np.uint32(n >> 16)
  lo_lo, hi_lo, lo_hi = w_lo * n_lo, w_hi * n_lo, w_lo * n_hi
  # < 2**32: (2**16 - 1) + (2**16 - 1) + (2**16 - 1)**2 = 2**32 - 1 at most.
  cross = (lo_lo >> np.uint32(16)) + (hi_lo & lo16) + lo_hi
  return w_hi * n_hi + (hi_lo >> np.uint32(16)) + (cross >> np.uint32(16))


def dropout_keep(rng, shape, rate):
  """bool[shape], True with probability 1 - rate, hashed from the key and each element's index.

  Word (r, c), r the index along the first axis and c the flat index over the others, is
  mix32((c * golden) ^ s_r) with s_r = mix32((k0 + r * golden) ^ k1): no counter wider than 32
  bits at any size, and computed from iotas, so each device makes its own shard of the mask.
  """
  shape = tuple(shape) or (1,)
  inner = math.prod(shape[1:])
  if inner >= 1 << 32 or shape[0] >= 1 << 32:
    raise ValueError(f"dropout_keep: shape {shape} has 2**32 or more elements per row.")
  k0, k1 = key_words(rng)
  row = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  col, stride = jnp.zeros(shape, jnp.uint32), 1
  for axis in reversed(range(1, len(shape))):
    col = col + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  seed = mix32((k0 + row * _GOLDEN) ^ k1)
  words = mix32((col * _GOLDEN) ^ seed)
  return words >= np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
