"""Sharded runs on 8 forced CPU devices, checked against one device.

Run by tests/test_sharding.py in a subprocess (the device count must be set
before JAX starts). Prints one JSON object: per scenario, the collectives in
the compiled HLO and how the sharded results compare with the unsharded ones.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _util import train_step  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import approxjax as ax  # noqa: E402
from approxjax import networks
from approxjax._src.kernels import ffi as _ffi  # noqa: E402
from approxjax._src.kernels.options import ARITHMETIC_OFF  # noqa: E402

COLLECTIVE = re.compile(
    r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\("
)
EPS = float(np.finfo(np.float32).eps)


def collectives(compiled) -> list[list]:
    """[kind, shape] of every collective in a compiled program."""
    out = []
    for line in compiled.as_text().splitlines():
        match = COLLECTIVE.search(line)
        if match:
            out.append([match.group(2), match.group(1)])
    return out


def bound_ratio(got, want, scale, k):
    """max |got - want| / (2 k eps scale): <= 1 is within the float32 accumulation bound."""
    got, want, scale = (np.asarray(x, np.float64) for x in (got, want, scale))
    return float(np.max(np.abs(got - want) / (2 * k * EPS * scale + 1e-30)))


def same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def main() -> dict:
    res = {"devices": jax.device_count()}
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = lambda *s: NamedSharding(mesh, P(*s))  # noqa: E731
    mult = ax.mitchell(7)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (64, 48)) + 0.1
    w = jax.random.normal(k2, (48, 24)) + 0.1
    xs, ws = jax.device_put(x, shard("data")), jax.device_put(w, shard())

    def dense_loss(w, x):
        y = ax.dot_general(x, w, (((1,), (0,)), ((), ())), multiplier=mult)
        return jnp.sum(jnp.tanh(y)), y

    # Data-parallel dense forward + both gradients.
    grad = jax.jit(jax.grad(dense_loss, argnums=(0, 1), has_aux=True))
    (gw, gx), y = grad(ws, xs)
    (gw0, gx0), y0 = grad(w, x)
    g_out = 1 - np.tanh(np.asarray(y0, np.float64)) ** 2
    res["dense"] = {
        "collectives": collectives(grad.lower(ws, xs).compile()),
        "forward_equal": same(y, y0),
        "input_grad_equal": same(gx, gx0),
        "weight_grad_bound": bound_ratio(gw, gw0, np.abs(x).T @ np.abs(g_out), x.shape[0]),
        "input_sharding": str(gx.sharding.spec),
    }

    # The negative control: the bare FFI call, without partitioning rules.
    bare = jax.jit(
        lambda w, x: _ffi._raw_gemm(
            x[None],
            w[None],
            mult.lut[None],
            mult.facts[None],
            jnp.zeros((1, 2), jnp.uint32),  # noise: none
            transpose_lhs=False,
            transpose_rhs=False,
            options=ax.KernelOptions(),
            arithmetic=ARITHMETIC_OFF,
        )
    )
    res["bare_ffi_collectives"] = collectives(bare.lower(ws, xs).compile())

    # FSDP-style: weights sharded over the same axis as the batch.
    wf = jax.device_put(w, shard("data"))
    (gwf, gxf), yf = grad(wf, xs)
    res["fsdp"] = {
        "collectives": collectives(grad.lower(wf, xs).compile()),
        "forward_equal": same(yf, y0),
        "weight_grad_bound": bound_ratio(gwf, gw0, np.abs(x).T @ np.abs(g_out), x.shape[0]),
    }

    # Elementwise multiply.
    mul = jax.jit(lambda a, b: ax.multiply(a, b, mult))
    a = jax.device_put(x, shard("data"))
    res["multiply"] = {
        "collectives": collectives(mul.lower(a, a).compile()),
        "equal": same(mul(a, a), mul(x, x)),
    }

    # Data-parallel convolution, forward and both gradients.
    xc = jax.random.normal(k1, (16, 10, 10, 3)) + 0.1
    kc = jax.random.normal(k2, (3, 3, 3, 8)) + 0.1

    def conv_loss(kern, xin):
        out = ax.conv_general_dilated(
            xin, kern, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), multiplier=mult
        )
        return jnp.sum(out * out), out

    cgrad = jax.jit(jax.grad(conv_loss, argnums=(0, 1), has_aux=True))
    xcs, kcs = jax.device_put(xc, shard("data")), jax.device_put(kc, shard())
    (gk, gxc), yc = cgrad(kcs, xcs)
    (gk0, gxc0), yc0 = cgrad(kc, xc)
    res["conv"] = {
        "collectives": collectives(cgrad.lower(kcs, xcs).compile()),
        "forward_equal": same(yc, yc0),
        "input_grad_equal": same(gxc, gxc0),
        "weight_grad_rel": float(
            np.max(np.abs(np.asarray(gk) - np.asarray(gk0))) / np.max(np.abs(np.asarray(gk0)))
        ),
    }

    # The same with the patches built a few images at a time (lax.map).
    from approxjax._src.ops import conv

    saved, conv._CHUNK_ELEMENTS = conv._CHUNK_ELEMENTS, 0
    xb = jax.random.normal(k3, (64, 8, 8, 3)) + 0.1
    cgrad2 = jax.jit(jax.grad(conv_loss, argnums=(0, 1), has_aux=True))
    xbs = jax.device_put(xb, shard("data"))
    compiled = cgrad2.lower(kcs, xbs).compile()
    (gk, gxb), yb = cgrad2(kcs, xbs)
    (gk0, gxb0), yb0 = cgrad2(kc, xb)
    conv._CHUNK_ELEMENTS = saved
    res["conv_chunked"] = {
        "collectives": collectives(compiled),
        "chunked": "while" in compiled.as_text(),
        "forward_equal": same(yb, yb0),
        "input_grad_equal": same(gxb, gxb0),
        "weight_grad_rel": float(
            np.max(np.abs(np.asarray(gk) - np.asarray(gk0))) / np.max(np.abs(np.asarray(gk0)))
        ),
    }

    # A Flax CNN training step (forward, backward, optax update), data parallel.
    model = networks.build("cnn", 10)
    images = jax.random.normal(k3, (32, 8, 8, 1))
    labels = jnp.arange(32) % 10
    params = model.init(jax.random.key(1), images[:2])
    opt = optax.adam(1e-3)

    step = train_step(model, opt)
    jstep = jax.jit(step)
    state0 = (params, opt.init(params))
    sharded_in = (
        jax.device_put(state0, shard()),
        jax.device_put(images, shard("data")),
        jax.device_put(labels, shard("data")),
    )
    p1, _, _, logits1 = jstep(*sharded_in[0], *sharded_in[1:], mult)
    p0, _, _, logits0 = jstep(*state0, images, labels, mult)
    diffs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda u, v: float(jnp.max(jnp.abs(u - v))), p1, p0)
    )
    res["train_step"] = {
        "collectives": collectives(jstep.lower(*sharded_in[0], *sharded_in[1:], mult).compile()),
        "float32_collectives": collectives(
            jstep.lower(*sharded_in[0], *sharded_in[1:], None).compile()
        ),
        "logits_equal": same(logits1, logits0),
        "param_max_diff": max(diffs),
        "param_sharding": str(jax.tree_util.tree_leaves(p1)[0].sharding.spec),
    }

    # Sweep x data on a 2-D mesh: 4 multipliers, each trained on 2 devices.
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("sweep", "data"))
    stack = ax.stack([ax.mitchell(7), ax.truncated(7), ax.mbm(7), ax.drum(7)])
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None, 0)))
    stacked = jax.tree_util.tree_map(lambda t: jnp.stack([t] * 4), state0)
    on = lambda tree, *s: jax.device_put(tree, NamedSharding(mesh2, P(*s)))  # noqa: E731
    args2 = (
        *on(stacked, "sweep"),
        on(images, "data"),
        on(labels, "data"),
        on(stack, "sweep"),
    )
    q1, _, _, vlogits1 = vstep(*args2)
    q0, _, _, vlogits0 = vstep(*stacked, images, labels, stack)
    diffs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda u, v: float(jnp.max(jnp.abs(u - v))), q1, q0)
    )
    res["sweep_data"] = {
        "collectives": collectives(vstep.lower(*args2).compile()),
        "logits_equal": same(vlogits1, vlogits0),
        "param_max_diff": max(diffs),
        "param_sharding": str(jax.tree_util.tree_leaves(q1)[0].sharding.spec),
        "logits_sharding": str(vlogits1.sharding.spec),
    }

    # shard_map: a replicated weight, batch-sharded activations.
    def body(w, x):
        (gw, gx), y = jax.grad(dense_loss, argnums=(0, 1), has_aux=True)(w, x)
        return y, gw, gx

    smap = jax.jit(
        jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=(P("data"), P(), P("data")),
        )
    )
    ys, gws, gxs = smap(ws, xs)
    res["shard_map"] = {
        "forward_equal": same(ys, y0),
        "input_grad_equal": same(gxs, gx0),
        "weight_grad_bound": bound_ratio(gws, gw0, np.abs(x).T @ np.abs(g_out), x.shape[0]),
    }

    # The native path (a rank-2 design as two XLA dots): ordinary XLA, so
    # data parallelism needs only the weight gradient's all-reduce.
    design = ax.lowblock(7, 3)

    def native_loss(w, x):
        y = ax.dot_general(x, w, (((1,), (0,)), ((), ())), multiplier=design, method="native")
        return jnp.sum(jnp.tanh(y)), y

    ngrad = jax.jit(jax.grad(native_loss, argnums=(0, 1), has_aux=True))
    (ngw, ngx), ny = ngrad(ws, xs)
    (ngw0, ngx0), ny0 = ngrad(w, x)
    compiled = ngrad.lower(ws, xs).compile()
    res["native"] = {
        "collectives": collectives(compiled),
        "custom_calls": compiled.as_text().count("approxjax_"),
        "forward_max_diff": float(np.max(np.abs(np.asarray(ny) - np.asarray(ny0)))),
        "input_grad_max_diff": float(np.max(np.abs(np.asarray(ngx) - np.asarray(ngx0)))),
        "weight_grad_max_diff": float(np.max(np.abs(np.asarray(ngw) - np.asarray(ngw0)))),
        "input_sharding": str(ngx.sharding.spec),
    }

    # Explicitly sharded types (jax.make_mesh's default axis type).
    emesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(emesh):
        xe = jax.device_put(x, NamedSharding(emesh, P("data")))
        we = jax.device_put(w, NamedSharding(emesh, P()))
        (gwe, gxe), ye = grad(we, xe)
        res["explicit"] = {
            "forward_equal": same(ye, y0),
            "output_sharding": str(jax.typeof(ye).sharding.spec),
            "weight_grad_bound": bound_ratio(gwe, gw0, np.abs(x).T @ np.abs(g_out), x.shape[0]),
        }
    return res


if __name__ == "__main__":
    print("RESULT " + json.dumps(main()))
