"""Integer LUT GEMMs (IntegerMultiplier): against XLA's float32 dot and its int8 dot.

Usage: python benchmarks/bench_integer.py [--record] [--repeats N] [--size N]
       [--variant auto|baseline|avx2|avx512]

(--variant forces the CPU kernels' instruction set, as KernelOptions(variant=)
does: an AVX-512 machine measures the AVX2 path too.)

1. A size^3 GEMM of random 8-bit codes under 8 x 8-bit tables: mitchell8s
   (signed, entries in int16), exact8u (unsigned, entries up to 65025: held
   as int16 with a bias) and drum8u_k6; the ratio to jnp.dot of float32
   operands of the same shape (target <= 3) and to XLA's int8 dot of the
   same codes (int32 sums).
2. A vmapped stack of 8 integer multipliers against one (target <= 8), at
   size^3, and the same 8 GEMMs as separate calls in one jit against one.
3. Wider tables: 10 x 10 and 12 x 12 bits (int32 entries; 12 bits: a 64 MiB
   table) at 256 x 128 x 256 and 1024 x 128 x 1024 (K bounded by the int32 sums).
4. 16 x 16-bit function models (from_c with bits=16: one call of the compiled
   C model per product, sums in int64, float32 results) at 256 x 128 x 256:
   the exact product (the cost of the call itself) and a bit-level
   truncated array multiplier (256 partial-product bits per call, as
   gate-level EvoApproxLib models compute).
All timed in the same run, alternately (bench_gemm.time_pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import approxjax as ax

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import record, time_pair  # noqa: E402

DN = (((1,), (0,)), ((), ()))


def _codes(rng, mult, operand, shape):
    lo, hi = mult.code_range(operand)
    wide = mult.bits[operand] > 8
    dtype = [[np.uint8, np.int8], [np.uint16, np.int16]][wide][mult.signed[operand]]
    return jnp.asarray(rng.integers(lo, hi + 1, shape).astype(dtype))


WIDE_MODELS = """
#include <stdint.h>
int64_t mul16s_exact(int16_t a, int16_t b) { return (int64_t)a * b; }
/* A 16 x 16 array multiplier without the partial-product bits of weight
   below 2**8, bit by bit. */
uint32_t mul16u_array_k8(uint16_t a, uint16_t b) {
  uint32_t sum = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      if (i + j >= 8) sum += (uint32_t)(((a >> i) & (b >> j) & 1u)) << (i + j);
  return sum;
}
"""


def _call(fn, *args):
    return lambda: fn(*args)


def _function_models(rng, dot) -> list[list[str]]:
    """Section 4: the 16-bit function models' rows."""
    print("\n16-bit function models (ms)", flush=True)
    fn_rows = []
    m, k, nn = 256, 128, 256
    ga = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    gb = jnp.asarray(rng.standard_normal((k, nn)), jnp.float32)
    for function in ("mul16s_exact", "mul16u_array_k8"):
        mult = ax.from_c(WIDE_MODELS, function, bits=16, signed=function.startswith("mul16s"))
        a, b = _codes(rng, mult, 0, (m, k)), _codes(rng, mult, 1, (k, nn))
        fn = jax.jit(lambda a, b, mult=mult: ax.dot_general(
            a, b, DN, multiplier=mult, preferred_element_type=jnp.float32))  # fmt: skip
        t, f32 = time_pair(_call(fn, a, b), _call(dot, ga, gb), 3)
        ns = t * 1e6 / (m * k * nn)
        label = f"{m}x{k}x{nn}"
        fn_rows.append([mult.name, label, f"{t:.1f}", f"{f32:.2f}", f"{t / f32:.0f}",
                        f"{ns:.2f}"])  # fmt: skip
        print(f"{mult.name:<22} {label:<14} {t:>8.1f} {f32:>8.2f} {t / f32:>8.0f} "
              f"({ns:.2f} ns per product)", flush=True)  # fmt: skip
    return fn_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--variant", default="auto", choices=["auto", "baseline", "avx2", "avx512"])
    args = parser.parse_args(argv)
    opts = ax.KernelOptions(variant=args.variant)
    rng = np.random.default_rng(0)
    n = args.size
    fa = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    fb = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    dot = jax.jit(lambda a, b: jnp.dot(a, b))
    int_dot = jax.jit(lambda a, b: jax.lax.dot_general(a, b, DN, preferred_element_type=jnp.int32))
    rows = []
    print(f"GEMM {n}^3 of 8-bit codes (ms)", flush=True)
    print(f"{'multiplier':<14} {'lut':>8} {'f32 dot':>8} {'int8 dot':>9} {'lut/f32':>8} "
          f"{'lut/int8':>9}", flush=True)  # fmt: skip
    for mult in [
        ax.integer.mitchell(8, signed=True),
        ax.integer.exact(8, signed=False),
        ax.integer.drum(8, 6, signed=False),
    ]:
        a, b = _codes(rng, mult, 0, (n, n)), _codes(rng, mult, 1, (n, n))
        fn = jax.jit(lambda a, b, mult=mult: ax.dot_general(a, b, DN, multiplier=mult,
                                                            options=opts))  # fmt: skip
        lut, f32 = time_pair(_call(fn, a, b), _call(dot, fa, fb), args.repeats)
        lut2, i8 = time_pair(_call(fn, a, b), _call(int_dot, a, b), args.repeats)
        rows.append([mult.name, f"{n}^3", f"{lut:.1f}", f"{f32:.1f}", f"{i8:.2f}",
                     f"{lut / f32:.2f}", f"{lut2 / i8:.1f}"])  # fmt: skip
        print(f"{mult.name:<14} {lut:>8.1f} {f32:>8.1f} {i8:>9.2f} {lut / f32:>8.2f} "
              f"{lut2 / i8:>9.1f}", flush=True)  # fmt: skip

    designs = [ax.integer.drum(8, k, signed=True) for k in (3, 4, 5, 6)]
    designs += [ax.integer.mitchell(8), ax.integer.exact(8), ax.integer.kulkarni(8, signed=True)]
    designs += [ax.integer.broken_array(8, 2, 6, signed=True)]
    stack = ax.stack(designs)
    a, b = _codes(rng, designs[0], 0, (n, n)), _codes(rng, designs[0], 1, (n, n))
    many = jax.jit(jax.vmap(lambda mm: ax.dot_general(a, b, DN, multiplier=mm, options=opts)))
    one = jax.jit(lambda mm: ax.dot_general(a, b, DN, multiplier=mm, options=opts))
    calls = jax.jit(lambda ds: [ax.dot_general(a, b, DN, multiplier=d, options=opts) for d in ds])
    # Medians of at least 10 alternated calls each (a median of 3 moved by
    # 10% between runs on a shared 2-core VM); the same GEMMs as separate
    # calls in one jit show what the stack saves over them.
    repeats = max(10, args.repeats)
    t_many, t_one = time_pair(lambda: many(stack), lambda: one(designs[0]), repeats)
    t_calls, t_one2 = time_pair(lambda: calls(designs), lambda: one(designs[0]), repeats)
    print(f"\nstack of {len(designs)} at {n}^3: {t_many:.1f} ms, one {t_one:.1f} ms, "
          f"ratio {t_many / t_one:.2f} (target <= {len(designs)}); {len(designs)} calls in one "
          f"jit {t_calls / t_one2:.2f} x one", flush=True)  # fmt: skip
    stack_row = [f"stack of {len(designs)} (vmap)", f"{n}^3", f"{t_many:.1f}", "",
                 "", f"{t_many / t_one:.2f} x one", ""]  # fmt: skip
    calls_row = [f"{len(designs)} calls in one jit", f"{n}^3", f"{t_calls:.1f}", "", "",
                 f"{t_calls / t_one2:.2f} x one", ""]  # fmt: skip

    wide_rows = []
    print("\nwide tables (ms)", flush=True)
    for bits, shape in [(10, (256, 128, 256)), (10, (1024, 128, 1024)),
                        (12, (256, 128, 256)), (12, (1024, 128, 1024))]:  # fmt: skip
        mult = ax.integer.truncated(bits, bits, signed=False)
        m, k, nn = shape
        a, b = _codes(rng, mult, 0, (m, k)), _codes(rng, mult, 1, (k, nn))
        ga = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
        gb = jnp.asarray(rng.standard_normal((k, nn)), jnp.float32)
        fn = jax.jit(lambda a, b, mult=mult: ax.dot_general(a, b, DN, multiplier=mult,
                                                            options=opts))  # fmt: skip
        lut, f32 = time_pair(_call(fn, a, b), _call(dot, ga, gb), max(3, args.repeats // 3))
        label = f"{m}x{k}x{nn}"
        wide_rows.append([mult.name, label, f"{lut:.1f}", f"{f32:.2f}", "", f"{lut / f32:.1f}", ""])
        print(f"{mult.name:<22} {label:<14} {lut:>8.1f} {f32:>8.2f} {lut / f32:>8.1f}", flush=True)
    fn_rows = []
    if jax.default_backend() == "cpu":  # function models run in the CPU kernel only
        fn_rows = _function_models(rng, dot)
    if args.record:
        record(
            "bench_integer.py",
            "Integer LUT GEMMs of random codes (approxjax_int_gemm), against jnp.dot of float32 "
            "operands of the same shape and XLA's int8 dot of the same codes, timed "
            "alternately with each; targets lut/f32 <= 3 at 1024^3 and a stack of 8 <= 8x one."
            + ("" if args.variant == "auto" else f" Kernels forced to --variant {args.variant}."),
            ["multiplier", "shape", "lut ms", "f32 dot ms", "int8 dot ms", "lut/f32",
             "lut/int8"],
            rows + [stack_row, calls_row] + wide_rows,
        )  # fmt: skip
        if fn_rows:
            _record_function_models(fn_rows)
    return 0


def _record_function_models(fn_rows):
    record(
        "bench_integer.py (function models)",
        "16 x 16-bit integer function models (from_c with bits=16): one call of the "
        "compiled C model per product, int64 sums rounded to float32, against jnp.dot of "
        "float32 operands of the same shape, timed alternately.",
        ["model", "shape", "ms", "f32 dot ms", "ratio", "ns per product"],
        fn_rows,
    )


if __name__ == "__main__":
    sys.exit(main())
