"""The catalog of built-in float multipliers (significand tables), by name.

Each constructor returns a :class:`~approxjax.Multiplier` whose table it
computes in float64 and rounds once to float32; each cites its paper and has
a C twin in ``luts/`` that the tests check bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from approxjax._src.arithmetic.multipliers import Multiplier, check_mantissa_bits


def _fractions(m: int, force_lowest_bit: bool = False) -> np.ndarray:
    """Operand fractions ``i / 2**m``, optionally with the lowest kept bit set to 1."""
    i = np.arange(1 << m, dtype=np.int64)
    if force_lowest_bit and m > 0:
        i = i | 1
    return i.astype(np.float64) / (1 << m)


def _truncate_result(p: np.ndarray, m: int) -> np.ndarray:
    """Truncates each product's significand to ``m`` fraction bits (p > 0)."""
    exp = np.floor(np.log2(p))
    sig = p / 2.0**exp
    return np.floor(sig * (1 << m)) / (1 << m) * 2.0**exp


def _table(p: np.ndarray, m: int, truncate_result: bool) -> np.ndarray:
    if truncate_result:
        p = _truncate_result(p, m)
    return p.astype(np.float32)


def _param_name(base: str, m: int, **params) -> str:
    extra = "".join(f":{k}=1" if v is True else f":{k}={v}" for k, v in params.items() if v)
    return f"{base}{m}{extra}"


def truncated(m: int, *, truncate_result: bool = False) -> Multiplier:
    """Exact multiplication of significands truncated to ``m`` fraction bits.

    ``lut[i, j] = (1 + i/2**m) * (1 + j/2**m)`` rounded once to float32 (exact
    for ``m <= 11``): each operand keeps its top ``m`` fraction bits (truncation,
    as a narrow multiplier's input stage does). At ``m = 7`` this is
    bfloat16-input multiplication with truncated conversion, and the product
    equals the float32 product of the two truncated operands wherever that is
    a normal number. For ``m <= 11`` (without ``truncate_result``) the table
    is separable, ``lut[i, j] == f[i] * g[j]`` exactly, so the CPU kernel
    runs it as a GEMM of the transformed operands, without per-tile tables;
    at ``m = 12`` it is ``float32(f[i] * g[j])``, and the kernel rounds each
    product of the transformed operands before adding it.

    Args:
      m: mantissa bits, 0 to 12.
      truncate_result: also truncate the product's significand to ``m`` fraction
        bits (ApproxTrain's ``ACC_7`` bfloat16 table is ``truncated(7,
        truncate_result=True)``).
    """
    sig = 1.0 + _fractions(check_mantissa_bits(m))
    name = _param_name("truncated", m, trunc=truncate_result)
    factors = None if truncate_result else (sig[None], sig[None])
    return Multiplier(_table(np.outer(sig, sig), m, truncate_result), name=name, factors=factors)


def mitchell(
    m: int, *, force_lowest_bit: bool = False, truncate_result: bool = False
) -> Multiplier:
    """Mitchell's logarithmic multiplier.

    J. N. Mitchell, "Computer multiplication and division using binary
    logarithms", IRE Trans. Electronic Computers, EC-11(4), 1962.

    With significands ``1 + x`` and ``1 + y`` (``x, y`` in [0, 1)), ``log2(1 + x)``
    is approximated by ``x``, the logarithms are added and the antilogarithm is
    approximated the same way: the product is ``1 + x + y`` when ``x + y < 1``,
    else ``2 (x + y)``. It never overestimates; its largest relative error,
    1/9 (11.1%), occurs at ``x = y = 0.5`` (2 instead of 2.25).

    Args:
      m: mantissa bits, 0 to 12.
      force_lowest_bit: set the lowest kept fraction bit of each operand to 1
        before the addition (an unbiasing trick; ApproxTrain's MBM tables use it).
      truncate_result: truncate the product's significand to ``m`` fraction bits
        (as all of ApproxTrain's tables do; its ``MIT_m`` tables are
        ``mitchell(m, truncate_result=True)``).
    """
    m = check_mantissa_bits(m)
    x = _fractions(m, force_lowest_bit)
    s = x[:, None] + x[None, :]
    p = np.where(s < 1, 1 + s, 2 * s)
    name = _param_name("mitchell", m, lsb=force_lowest_bit, trunc=truncate_result)
    return Multiplier(_table(p, m, truncate_result), name=name)


MBM_CORRECTION = 2.0**-4 + 2.0**-6


def mbm(m: int, *, force_lowest_bit: bool = False, truncate_result: bool = False) -> Multiplier:
    """The minimally biased multiplier (MBM).

    H. Saadat, H. Bokhari, S. Parameswaran, "Minimally Biased Multipliers for
    Approximate Integer and Floating-Point Multiplication", IEEE Trans. CAD
    37(11), 2018.

    Mitchell's multiplier plus a constant error-correction term
    ``c = 2**-4 + 2**-6`` that cancels most of its bias. With ``s = x + y``:

    * ``s < 1`` (no carry out of the significand sum): the product is
      ``1 + s + c``. Where ``s + c >= 1`` the corrected sum carries into the
      next binade (``[0, 118]`` at ``m = 7`` with ``force_lowest_bit`` is
      ``1 + 120/128 + c = 2.015625``), as ApproxTrain's published ``MBM_m``
      tables have it;
    * ``s >= 1`` (the sum carries): the term is halved, ``2 (s + c/2)``,
      unless that reaches 4 (``s - 1 + c/2 >= 1``): then it is left out,
      ``2 s``.

    Args:
      m: mantissa bits, 0 to 12.
      force_lowest_bit: set the lowest kept fraction bit of each operand to 1
        before the log-domain addition (ApproxTrain's ``MBM_m`` tables do).
      truncate_result: truncate the product's significand to ``m`` fraction bits.
        ApproxTrain's ``MBM_m`` tables are ``mbm(m, force_lowest_bit=True,
        truncate_result=True)``.
    """
    m = check_mantissa_bits(m)
    x = _fractions(m, force_lowest_bit)
    s = x[:, None] + x[None, :]
    high_f = s - 1 + MBM_CORRECTION / 2
    high = np.where(high_f < 1, high_f, s - 1)
    p = np.where(s < 1, 1 + s + MBM_CORRECTION, 2 * (1 + high))
    name = _param_name("mbm", m, lsb=force_lowest_bit, trunc=truncate_result)
    return Multiplier(_table(p, m, truncate_result), name=name)


def _check_int_param(name: str, value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{what} needs {lo} <= {name} <= {hi}; got {name}={value!r}")
    return int(value)


def drum(m: int, k: int | None = None) -> Multiplier:
    """A dynamic-range unbiased multiplier (DRUM) on the significands.

    S. Hashemi, R. I. Bahar, S. Reda, "DRUM: A Dynamic Range Unbiased Multiplier
    for Approximate Applications", ICCAD 2015.

    DRUM keeps the ``k`` most significant bits of each operand starting at its
    leading one, sets the lowest kept bit to 1 (which makes the truncation
    error zero-mean) and multiplies the short operands exactly. On a
    significand ``1.f`` the leading one is fixed, so each operand keeps ``k - 1``
    fraction bits, the last forced to 1 whenever lower bits were dropped
    (``k <= m``), and the product is exact. The table is therefore separable,
    ``lut[i, j] == f[i] * f[j]``, and the CPU kernel runs it as a GEMM of the
    transformed operands, without per-tile tables.

    Args:
      m: mantissa bits, 0 to 12.
      k: kept significand bits including the leading one, ``2 <= k <= m + 1``
        (default ``max(2, (m + 1) // 2 + 1)``); ``k = m + 1`` is exact.
    """
    m = check_mantissa_bits(m)
    if m == 0:
        raise ValueError("drum needs m >= 1")
    k = _check_int_param("k", max(2, (m + 1) // 2 + 1) if k is None else k, 2, m + 1, "drum")
    i = np.arange(1 << m, dtype=np.int64)
    drop = m - (k - 1)
    if drop > 0:
        i = ((i >> drop) << drop) | (1 << drop)
    sig = 1.0 + i / float(1 << m)
    return Multiplier(
        np.outer(sig, sig).astype(np.float32), name=f"drum{m}:k={k}", factors=(sig[None], sig[None])
    )


def alm_soa(m: int, w: int | None = None) -> Multiplier:
    """Approximate logarithmic multiplier with a set-one adder (ALM-SOA).

    W. Liu, J. Xu, D. Wang, C. Wang, P. Montuschi, F. Lombardi, "Design and
    Evaluation of Approximate Logarithmic Multipliers for Low Power
    Error-Tolerant Applications", IEEE Trans. Circuits and Systems I 65(9), 2018.

    Mitchell's multiplier whose log-domain adder is approximate: the lowest
    ``w`` bits of the fraction sum are set to 1 and produce no carry, the upper
    bits are added exactly. With fractions ``i, j`` as m-bit integers:
    ``t = ((i >> w) + (j >> w)) << w | (2**w - 1)`` and ``s = t / 2**m``; the
    product is ``1 + s`` when ``s < 1``, else ``2 s``. Setting the low bits to 1
    offsets much of Mitchell's negative bias.

    Args:
      m: mantissa bits, 0 to 12.
      w: approximated low bits of the adder, ``0 <= w <= m`` (default ``m // 2``);
        ``w = 0`` is Mitchell's multiplier.
    """
    m = check_mantissa_bits(m)
    w = _check_int_param("w", m // 2 if w is None else w, 0, m, "alm_soa")
    i = np.arange(1 << m, dtype=np.int64)
    t = (((i[:, None] >> w) + (i[None, :] >> w)) << w) | ((1 << w) - 1)
    s = t / float(1 << m)
    p = np.where(s < 1, 1 + s, 2 * s)
    return Multiplier(p.astype(np.float32), name=f"alm_soa{m}:w={w}")


def lowblock(m: int, k: int | None = None) -> Multiplier:
    """A regular-error design: the exact significand product without the
    partial products of the low ``k`` fraction bits of both operands.

    The error sits in one regular block of the partial-product array, the
    idea of Yu et al., "Toward Efficient Retraining: A Large-Scale
    Approximate Neural Network Framework With Cross-Layer Optimization",
    IEEE TVLSI 2024 (designs whose errors GEMM libraries can simulate), on
    float significands; dropping low-order partial-product cells is the
    broken-array multiplier's saving (H. R. Mahdiani et al., IEEE TCAS-I
    57(4), 2010). With fractions ``x = i / 2**m`` and ``y = j / 2**m`` and
    their low parts ``xl = (i mod 2**k) / 2**m``, ``yl`` likewise, the product
    is ``(1 + x)(1 + y) - xl * yl``: never above the exact one, and rank 2
    (``[1 + x, -xl] . [1 + y, yl]``), so ``method="native"`` runs it as two
    float32 GEMMs. ``k = 0`` is exact (rank 1).

    Args:
      m: mantissa bits, 0 to 12.
      k: dropped low bits of each operand, ``0 <= k <= m`` (default ``m // 2``).
    """
    m = check_mantissa_bits(m)
    k = _check_int_param("k", m // 2 if k is None else k, 0, m, "lowblock")
    i = np.arange(1 << m, dtype=np.int64)
    sig = 1.0 + i / float(1 << m)
    low = (i & ((1 << k) - 1)) / float(1 << m)
    table = np.outer(sig, sig) - np.outer(low, low)
    factors = (np.stack([sig, -low]), np.stack([sig, low])) if k else (sig[None], sig[None])
    return Multiplier(table.astype(np.float32), name=f"lowblock{m}:k={k}", factors=factors)


CATALOG = {
    "truncated": truncated,
    "mitchell": mitchell,
    "mbm": mbm,
    "drum": drum,
    "alm_soa": alm_soa,
    "lowblock": lowblock,
}

_OPTION_ALIASES = {"lsb": "force_lowest_bit", "trunc": "truncate_result"}


def get(spec: str, m: int | None = None) -> Multiplier:
    """A catalog multiplier by name: ``"mitchell7"``, ``"drum7:k=4"``, or ``get("mbm", 5)``.

    Options after ``:`` are keyword arguments of the constructor, as integers
    (``"mbm7:lsb=1:trunc=1"`` is ``mbm(7, force_lowest_bit=True,
    truncate_result=True)``); a multiplier's ``name`` is such a spec.

    Raises:
      ValueError: unknown name (the message lists the known ones), missing or
        contradictory m, or a bad option.
    """
    if not isinstance(spec, str):
        raise TypeError(f"multiplier name must be a string; got {spec!r}")
    head, *opts = spec.strip().split(":")
    base = head.rstrip("0123456789")
    digits = head[len(base) :]
    if base not in CATALOG:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(f"unknown multiplier {spec!r}; known: {known} (append m, e.g. mitchell7)")
    if digits and m is not None and int(digits) != m:
        raise ValueError(f"{spec!r} names m={digits} but m={m} was given")
    if not digits and m is None:
        raise ValueError(f"{spec!r} needs its mantissa bits: write e.g. {base}7")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq:
            raise ValueError(f"option {opt!r} of {spec!r} must be key=value")
        key = _OPTION_ALIASES.get(key, key)
        try:
            kwargs[key] = int(value)
        except ValueError as e:
            raise ValueError(f"option {opt!r} of {spec!r} needs an integer value") from e
        if key in ("force_lowest_bit", "truncate_result"):
            kwargs[key] = bool(kwargs[key])
    try:
        return CATALOG[base](int(digits) if digits else m, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for {base}: {e}") from e
