"""One process of a 2-process ``jax.distributed`` run over loopback, or the
single-process run it must equal.

    python _distributed_worker.py PROCESS_ID PORT OUT.npz   # PROCESS_ID 0 or 1
    python _distributed_worker.py single - OUT.npz

Each process owns one CPU device and half of the batch; a data-parallel Flax
training step under mitchell(7) runs on the global 2-device mesh.
"""

from __future__ import annotations

import functools
import sys

import jax

if sys.argv[1] != "single":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{sys.argv[2]}",
        num_processes=2,
        process_id=int(sys.argv[1]),
        initialization_timeout=120,
    )

import numpy as np  # noqa: E402
import optax  # noqa: E402
from _util import train_step  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import approxjax as ax  # noqa: E402
from approxjax import networks  # noqa: E402

BATCH = 32


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)
    labels = (np.arange(BATCH) % 10).astype(np.int32)
    model = networks.build("cnn", 10)
    params = model.init(jax.random.key(1), images[:2])
    opt = optax.adam(1e-2)
    mult = ax.mitchell(7)

    step = functools.partial(train_step(model, opt), mult=mult)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    nproc, pid = jax.process_count(), jax.process_index()
    rows = slice(pid * BATCH // nproc, (pid + 1) * BATCH // nproc)

    def global_batch(a):
        return jax.make_array_from_process_local_data(
            NamedSharding(mesh, P("data")), a[rows], a.shape
        )

    def replicated(tree):
        return jax.tree_util.tree_map(
            lambda a: jax.make_array_from_process_local_data(
                NamedSharding(mesh, P()), np.asarray(a), np.shape(a)
            ),
            tree,
        )

    state = replicated((params, opt.init(params)))
    jstep = jax.jit(step)
    losses, first_logits = [], None
    for _ in range(3):
        *state, loss, logits = jstep(*state, global_batch(images), global_batch(labels))
        losses.append(float(loss))
        if first_logits is None:  # from identical parameters: equal bit for bit
            first_logits = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    flat = jax.tree_util.tree_leaves(state[0])
    gathered = [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in flat]
    if pid == 0:
        np.savez(
            sys.argv[3],
            losses=np.asarray(losses),
            first_logits=first_logits,
            processes=nproc,
            devices=jax.device_count(),
            **{f"param{i}": a for i, a in enumerate(gathered)},
        )
    if nproc > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
