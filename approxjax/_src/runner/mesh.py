"""Where a sweep runs: the device mesh and the placement of its arrays."""

from __future__ import annotations

import jax
import numpy as np

from approxjax._src.runner.config import ConfigError

MESH_AXES = ("sweep", "data")


def parse_mesh(spec: str, n_devices: int, batch_size: int) -> dict[str, int]:
    """Mesh axis sizes from ``spec``: ``"sweep=4,data=2"``, ``"auto"`` or ``"none"``.

    ``auto`` puts every visible device on the data axis when the batch divides
    evenly, and uses one device otherwise; ``none`` uses one device. An
    explicit spec is checked the same way on one device as on many.

    Raises:
      ConfigError: a malformed spec, more devices than are visible, or a batch
        that does not split over the data axis.
    """
    if spec == "none":
        return {"sweep": 1, "data": 1}
    if spec == "auto":
        data = n_devices if n_devices > 1 and batch_size % n_devices == 0 else 1
        return {"sweep": 1, "data": data}
    sizes = {"sweep": 1, "data": 1}
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        if name not in MESH_AXES or not eq or not value.isdigit() or int(value) < 1:
            raise ConfigError(
                f"--mesh {spec!r}: each part must be sweep=N or data=N with N >= 1 (or the "
                f"whole spec auto or none); got {part!r}"
            )
        sizes[name] = int(value)
    used = sizes["sweep"] * sizes["data"]
    if used > n_devices:
        raise ConfigError(
            f"--mesh {spec!r} needs {used} devices; {n_devices} are visible "
            "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
        )
    if batch_size % sizes["data"]:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over data={sizes['data']} devices"
        )
    return sizes


class Placement:
    """Where a group's arrays live: stacked state and tables split over ``sweep``,
    batches over ``data``, everything else replicated; XLA partitions the step."""

    def __init__(self, sizes: dict[str, int]):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        n = sizes["sweep"] * sizes["data"]
        devices = np.asarray(jax.devices()[:n]).reshape(sizes["sweep"], sizes["data"])
        self.sizes = sizes
        self.mesh = Mesh(devices, MESH_AXES)
        self._named = lambda *spec: NamedSharding(self.mesh, PartitionSpec(*spec))

    def sweep_axis(self, count: int | None) -> str | None:
        """The sweep axis for a stack of ``count`` (None: not stacked), if it splits evenly."""
        if count is None or self.sizes["sweep"] == 1 or count % self.sizes["sweep"]:
            return None
        return "sweep"

    def state(self, tree, axis: str | None):
        return jax.device_put(tree, self._named(axis) if axis else self._named())

    def batch(self, array):
        data = self.sizes["data"]
        if data > 1 and len(array) % data == 0:
            return jax.device_put(array, self._named("data"))
        return jax.device_put(array, self._named())

    def describe(self) -> str:
        s, d = self.sizes["sweep"], self.sizes["data"]
        kind = jax.devices()[0].platform
        return (
            f"mesh sweep={s} x data={d} over {s * d} of {jax.device_count()} {kind} device(s) "
            f"({jax.process_count()} process(es)): multiplier stacks split over sweep, "
            f"batches over data"
        )
