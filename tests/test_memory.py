"""Short of memory, a GEMM is an error, never a crash.

Each kernel path runs a large GEMM, compiled beforehand, in a fresh child
process whose address space is limited (``RLIMIT_AS``) to what it uses plus
its output and a little more, so that the kernel's own buffers (the
prepacked operand, partial sums, tables) may fail to allocate: the call
completes or raises (RESOURCE_EXHAUSTED), and the process exits normally.
Before the fix, the separable paths (truncated, DRUM, stacks) died with
SIGSEGV: a failed allocation of the prepacked operand left it marked
prescaled, and a unit read through a null pointer.
"""

import subprocess
import sys

import pytest

_SCRIPT = r"""
import resource, sys
import numpy as np, jax, approxjax as ax

kind, size, extra_mib = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
a = jax.device_put(rng.standard_normal((size, size)).astype(np.float32))
b = jax.device_put(rng.standard_normal((size, size)).astype(np.float32))
dn = (((1,), (0,)), ((), ()))
mult = {
    "truncated7": ax.truncated(7), "drum7": ax.drum(7), "truncated12": ax.truncated(12),
    "mitchell7": ax.mitchell(7), "mbm7": ax.mbm(7),
    "stack": ax.stack([ax.truncated(7), ax.drum(7)]),
    "gathers": ax.mitchell(7), "no-prepack": ax.truncated(7),
}[kind]
opts = {"gathers": ax.KernelOptions(gemm="gathers"),
        "no-prepack": ax.KernelOptions(prepack=False)}.get(kind)
gemm = lambda mu, a, b: ax.dot_general(a, b, dn, multiplier=mu, options=opts)
f = jax.jit(jax.vmap(gemm, (0, None, None)) if mult.batch_shape else gemm)
f = f.lower(mult, a, b).compile()
out_bytes = 4 * size * size * (mult.batch_shape[0] if mult.batch_shape else 1)

def vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + out_bytes + int(extra_mib * 2**20), hard))
try:
    jax.block_until_ready(f(mult, a, b))
    print("ok")
except Exception as e:  # noqa: BLE001 - any clean error is what we want
    text = str(e)
    print("oom" if "RESOURCE_EXHAUSTED" in text else "error: " + text[:300])
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,size",
    [
        ("truncated7", 2048),
        ("drum7", 2048),
        ("truncated12", 1024),
        ("stack", 2048),
        ("mitchell7", 1024),
        ("mbm7", 1024),
        ("no-prepack", 1024),
        ("gathers", 512),
    ],
)
def test_short_of_memory_is_an_error_not_a_crash(kind, size, tmp_path):
    outcomes = []
    for extra_mib in (2, 8, 64):
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, kind, str(size), str(extra_mib)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        assert proc.returncode == 0, (extra_mib, proc.returncode, proc.stderr[-2000:])
        outcomes.append(proc.stdout.strip().splitlines()[-1])
    assert all(o in ("ok", "oom") for o in outcomes), outcomes
    assert outcomes[-1] == "ok", outcomes  # with room for the kernel's buffers
