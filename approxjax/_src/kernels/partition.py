"""How the approximate custom calls split across devices.

XLA cannot see inside a custom call, so left alone it runs one on every device
over the whole (all-gathered) operands. This module gives each call a rule of
the einsum kind that JAX's Shardy partitioner understands, plus the callback
that turns the operands' shardings into a per-device program, through
``jax.experimental.custom_partitioning``:

* every leading (batch) dimension, the output rows ``m`` and columns ``n`` of
  a GEMM, and the elements of an elementwise multiply stay sharded as they
  come: each device runs the kernel on its shard;
* a sharded contraction ``k`` (the weight gradient of a batch-sharded layer)
  runs as local partial GEMMs followed by a ``psum``: the same all-reduce
  exact float32 training has;
* the table dimensions are never split (the kernel needs whole tables);
* a mesh axis claimed by two dimensions is kept for the first one (batch
  dimensions, then ``m``, ``n``, ``k``) and the other operand is gathered,
  as XLA does for its own dot (FSDP-style weight sharding thus gathers the
  weights, never the activations).

An operand dimension of size 1 that broadcasts against a larger one (a
``vmap`` over the tables with shared operands) is replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

Shape = tuple[int, ...]
Factors = Sequence[Sequence[str]]


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


class _Layout:
    """The factors of one call: leading batch dimensions ``b0, b1, ...`` (all
    operands and the result, numpy-broadcast), then per operand and for the
    result the factor names of the trailing dimensions (``core``)."""

    def __init__(self, shapes: Sequence[Shape], out_shape: Shape, core: Factors):
        self.shapes = [tuple(s) for s in shapes]
        self.out_shape = tuple(out_shape)
        self.lead = len(out_shape) - len(core[-1])
        self.core = [tuple(c) for c in core]
        self.order: list[str] = [f"b{i}" for i in range(self.lead)]
        for names in self.core:
            self.order += [f for f in names if f not in self.order]

    def factor(self, j: int, d: int) -> str | None:
        """Factor of operand ``j``'s dimension ``d``; None for a broadcast size-1 dimension."""
        if d < self.lead:
            return f"b{d}" if self.shapes[j][d] == self.out_shape[d] else None
        return self.core[j][d - self.lead]

    def rule(self) -> tuple[str, list[str]]:
        """The Shardy rule, and the extra factors given to broadcast size-1 dimensions."""
        extra, parts = [], []
        for j, shape in enumerate(self.shapes):
            names = [self.factor(j, d) or f"r{j}x{d}" for d in range(len(shape))]
            extra += [f for f in names if f.startswith("r")]
            parts.append(" ".join(names))
        out = " ".join([f"b{i}" for i in range(self.lead)] + list(self.core[-1]))
        return ", ".join(parts) + " -> " + out, extra

    def assign(
        self, arg_specs: Sequence[tuple], skip: set[str], axis_sizes=None
    ) -> dict[str, tuple[str, ...]]:
        """Mesh axes per factor, read from the operands in factor order, each axis used
        once, and only where they divide the dimension evenly (``axis_sizes``)."""
        used: set[str] = set()
        chosen: dict[str, tuple[str, ...]] = {}
        for f in self.order:
            if f in skip:
                continue
            for j, spec in enumerate(arg_specs):
                dims = [d for d in range(len(self.shapes[j])) if self.factor(j, d) == f]
                axes = _axes(spec[dims[0]]) if dims and dims[0] < len(spec) else ()
                if axes and axis_sizes is not None:
                    parts = int(np.prod([axis_sizes[a] for a in axes]))
                    if self.shapes[j][dims[0]] % parts:
                        continue
                if axes and not used & set(axes):
                    chosen[f] = axes
                    used |= set(axes)
                    break
        return chosen

    def specs(self, chosen) -> tuple[list[PartitionSpec], PartitionSpec]:
        """Operand and result specs for the chosen factor axes."""
        arg_specs = [
            PartitionSpec(
                *[
                    _entry(chosen.get(self.factor(j, d) or "", ()))
                    for d in range(len(self.shapes[j]))
                ]
            )
            for j in range(len(self.shapes))
        ]
        out = [f"b{i}" for i in range(self.lead)] + list(self.core[-1])
        return arg_specs, PartitionSpec(*[_entry(chosen.get(f, ())) for f in out])


def _sharding_specs(args) -> list[tuple]:
    return [
        tuple(a.sharding.spec) if isinstance(getattr(a, "sharding", None), NamedSharding) else ()
        for a in args
    ]


def result_spec(
    shapes: Sequence[Shape],
    out_shape: Shape,
    core: Factors,
    arg_specs: Sequence[tuple],
    *,
    replicated: Sequence[str],
    reduced: Sequence[str],
) -> PartitionSpec:
    """The result's spec for operands with ``arg_specs`` (for explicitly sharded types)."""
    layout = _Layout(shapes, out_shape, core)
    return layout.specs(layout.assign(arg_specs, set(replicated) | set(reduced)))[1]


def partitioned(
    impl: Callable,
    shapes: Sequence[Shape],
    out_shape: Shape,
    core: Factors,
    *,
    replicated: Sequence[str],
    reduced: Sequence[str],
) -> Callable:
    """``impl`` wrapped so the partitioner splits it by the factors in ``core``.

    Args:
      impl: the single-device function of the operands (one result).
      shapes, out_shape: the global shapes.
      core: per operand and then the result, the factor names of the
        trailing dimensions (the leading ones are broadcast batch dimensions).
      replicated: factors that must not be split (table dimensions).
      reduced: contraction factors: split means partial results and a psum.
    """
    layout = _Layout(shapes, out_shape, core)
    rule, extra = layout.rule()

    def infer(mesh, arg_shapes, result_shape):
        skip = set(replicated) | set(reduced)
        chosen = layout.assign(_sharding_specs(arg_shapes), skip, dict(mesh.shape))
        return NamedSharding(mesh, layout.specs(chosen)[1])

    def partition(mesh, arg_shapes, result_shape):
        chosen = layout.assign(_sharding_specs(arg_shapes), set(replicated), dict(mesh.shape))
        arg_specs, out_spec = layout.specs(chosen)
        psum_axes = tuple(a for f in reduced for a in chosen.get(f, ()))

        def lower(*args):
            out = impl(*args)
            return jax.lax.psum(out, psum_axes) if psum_axes else out

        return (
            mesh,
            lower,
            NamedSharding(mesh, out_spec),
            tuple(NamedSharding(mesh, s) for s in arg_specs),
        )

    # Shardy wants the special factors in the order the rule first names them.
    names = rule.replace(",", " ").replace("->", " ").split()
    first = {f: names.index(f) for f in set(names)}
    wrapped = custom_partitioning(impl)
    wrapped.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        reduction_factors=tuple(f for f in reduced if f in first),
        need_replication_factors=tuple(
            sorted({f for f in (*replicated, *extra) if f in first}, key=first.get)
        ),
    )
    return wrapped
