"""Kernel choices as a typed value: part of the compiled program, never a
hidden switch.

A :class:`KernelOptions` travels with each call (``dot_general(...,
options=...)``, the Flax modules' ``options`` field, ``approximate(...,
options=...)``) into the custom call as a static attribute, so jit keys on it
and a test sets it per call. None of the choices changes a single bit of a
result: each selects how the same sums are computed (every path is tested
against the reference). The defaults are the fastest measured; the one
environment variable left, ``APPROXJAX_CPU_KERNEL``, sets the default
instruction-set variant and is read once, when the extension loads.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

_VARIANTS = {"auto": 0, "baseline": 1, "avx2": 2, "avx512": 3}
_GEMMS = {"auto": 0, "tables": 1, "gathers": 2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelOptions:
    """How the CPU kernels compute (never what).

    Attributes:
      gemm: ``"auto"`` (the cost model picks), or force ``"tables"`` (per-tile
        tables) or ``"gathers"`` (a gather of each product from the table).
        Forcing turns the separable path off.
      separable: run tables that factor, ``lut[i, j] == f[i] * g[j]``, as a
        GEMM of transformed operands (no tables).
      compact: 16-bit per-tile tables where every entry is bfloat16-exact.
      planes: build compact tables by word permutes (AVX-512BW).
      codes: build compact tables by byte permutes (AVX-512 VBMI); for
        integer multipliers, build 16-bit per-tile tables from byte planes
        by byte permutes.
      pairs: integer multipliers: sum two k per instruction (AVX-512 VNNI
        ``vpdpwssd``, AVX2 ``vpmaddwd``).
      prepack: pack the streamed operand once per call.
      huge_pages: ask Linux for 2 MiB pages under outputs of 4 MiB and more
        (float and integer GEMMs; a stack of eight 1024 x 1024 outputs
        otherwise faults 8,000 pages a call).
      conv: convolutions read their patches in place (``"implicit"``; CPU
        only, no groups), build them (``"patches"``), or ``"auto"``.
      variant: the instruction-set variant of the CPU kernels; one the CPU
        lacks is an error when the call runs.
      check: GPU only: synchronise and check the stream after every kernel
        launch, so a fault is reported by the call that caused it (for first
        runs on a new GPU; slower).

    Example::

      >>> import approxjax as ax
      >>> opts = ax.KernelOptions(gemm="tables", prepack=False)
    """

    gemm: Literal["auto", "tables", "gathers"] = "auto"
    separable: bool = True
    compact: bool = True
    planes: bool = True
    codes: bool = True
    pairs: bool = True
    prepack: bool = True
    huge_pages: bool = True
    conv: Literal["auto", "implicit", "patches"] = "auto"
    variant: Literal["auto", "baseline", "avx2", "avx512"] = "auto"
    check: bool = False

    def __post_init__(self):
        if self.gemm not in _GEMMS:
            raise ValueError(f"gemm must be one of {sorted(_GEMMS)}; got {self.gemm!r}")
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {sorted(_VARIANTS)}; got {self.variant!r}")
        if self.conv not in ("auto", "implicit", "patches"):
            raise ValueError(f"conv must be 'auto', 'implicit' or 'patches'; got {self.conv!r}")
        for name in (
            "separable",
            "compact",
            "planes",
            "codes",
            "pairs",
            "prepack",
            "huge_pages",
            "check",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")

    def attribute(self) -> dict:
        """The GEMM targets' ``options`` attribute (types as the handler binds them)."""
        return {
            "gemm": np.int64(_GEMMS[self.gemm]),
            "separable": self.separable,
            "compact": self.compact,
            "planes": self.planes,
            "codes": self.codes,
            "prepack": self.prepack,
            "huge_pages": self.huge_pages,
            "variant": np.int64(_VARIANTS[self.variant]),
            "check": self.check,
        }


DEFAULT = KernelOptions()


def check_options(value) -> KernelOptions:
    """``value`` as KernelOptions (None: the defaults); TypeError otherwise."""
    if value is None:
        return DEFAULT
    if not isinstance(value, KernelOptions):
        raise TypeError(f"options must be approxjax.KernelOptions or None; got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ArithmeticAttribute:
    """The GEMM targets' ``arithmetic`` attribute (``ArithmeticSpec`` in
    xla_ffi/accumulate.h): formats of the product and of the accumulator,
    their rounding modes (0 nearest-even, 1 toward zero, 2 away from zero, 3
    stochastic), overflow (0 inf, 1 NaN, 2 saturate) and NaN (0 kept, 2 none)
    rules, and the adder (0 exact, 1 LOA, 2 a C function at ``adder_address``).
    ``product_bits`` bounds the significant bits of IEEE products (those of
    a table come with its facts); every IEEE product is a multiple of
    ``2**product_exponent`` (the operand formats' least quanta multiplied),
    and ``products_exact`` says that float32 holds each exactly (at most 24
    bits, no quantum below 2**-149, none beyond 2**127), so that a fused
    multiply-add gives the sum of the product. The default is off: float32
    nearest-even sums of the table's products."""

    enabled: bool = False
    exact_product: bool = False
    product_bits: int = 24
    product_exponent: int = -298
    products_exact: bool = False
    acc_m: int = 23
    acc_emin: int = -126
    acc_max: float = float(np.finfo(np.float32).max)
    acc_subnormals: bool = True
    acc_overflow: int = 0
    acc_nan: int = 0
    acc_inf: bool = True
    acc_rounding: int = 0
    product: bool = False
    prod_m: int = 23
    prod_emin: int = -126
    prod_max: float = float(np.finfo(np.float32).max)
    prod_subnormals: bool = True
    prod_overflow: int = 0
    prod_nan: int = 0
    prod_inf: bool = True
    prod_rounding: int = 0
    adder: int = 0
    loa_bits: int = 0
    adder_address: int = 0

    def attribute(self) -> dict:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                out[field.name] = value
            elif isinstance(value, float):
                out[field.name] = np.float32(value)
            else:
                out[field.name] = np.int64(value)
        return out


ARITHMETIC_OFF = ArithmeticAttribute()
