"""Peer benchmarks for the exact-Hessian workloads (JAX on the CPU, f64).

  dense    jax.jit(jax.hessian) of the mean CE loss of a 64-32-32-10 ReLU MLP with
           biases (P = 3,466) over all 1,797 UCI digits.
  gnnorm   exact per-sample Gauss-Newton norms on a 784-64-64-10 MLP over mnist10k
           samples: vmap(jacrev) per-sample logit Jacobians, then the K x K
           eigenproblem of A^1/2 J J^T A^1/2 (JAX's best route); reports samples/s.
  hvp      Hessian-vector products jax.jvp(jax.grad) of the mean loss of the
           784-64-64-10 MLP on a batch of 1,000 samples; reports HVPs/s.

Same workloads as `cargo bench --bench hessian`. Usage:
  python3 benches/peers/jax_hessian.py [dense|gnnorm|hvp|all] [--json out.json]
"""
import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from peer_data import digits, mnist10k  # noqa: E402

def init(sizes, seed=0):
    key = jax.random.PRNGKey(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        s = 1.0 / np.sqrt(fan_in)
        params.append((jax.random.uniform(kw, (fan_out, fan_in), jnp.float64, -s, s),
                       jax.random.uniform(kb, (fan_out,), jnp.float64, -s, s)))
    return params


def logits(params, x):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i + 1 < len(params):
            h = jax.nn.relu(h)
    return h


def loss(params, x, y):
    z = logits(params, x)
    return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0])


def timed(f, repeats):
    jax.block_until_ready(f())  # compile + warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def bench_dense(repeats):
    x, y = digits()
    params = init([64, 32, 32, 10])
    flat, unravel = ravel_pytree(params)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    h = jax.jit(jax.hessian(lambda t: loss(unravel(t), xj, yj)))
    t0 = time.perf_counter()
    jax.block_until_ready(h(flat))
    first = time.perf_counter() - t0
    med, best = timed(lambda: h(flat), repeats)
    return {"workload": "dense full Hessian 64-32-32-10 relu+bias, 1797 digits, f64", "P": int(flat.size),
            "first_call_s": first, "median_s": med, "min_s": best}


def bench_gnnorm(n, chunk):
    x, y = mnist10k()
    x, y = jnp.asarray(x[:n]), jnp.asarray(y[:n])
    params = init([784, 64, 64, 10])
    flat, unravel = ravel_pytree(params)

    def per_sample(xi):
        j = jax.jacrev(lambda t: logits(unravel(t), xi[None, :])[0])(flat)  # K x P
        z = logits(unravel(flat), xi[None, :])[0]
        p = jax.nn.softmax(z)
        s = jnp.sqrt(p)
        c = jnp.diag(s) - jnp.outer(p, s)  # A = C C^T
        core = c.T @ (j @ j.T) @ c
        return jnp.linalg.eigvalsh(core)[-1]

    f = jax.jit(jax.vmap(per_sample))
    jax.block_until_ready(f(x[:chunk]))
    t0 = time.perf_counter()
    out = [f(x[i:i + chunk]) for i in range(0, n - n % chunk, chunk)]
    jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    done = (n // chunk) * chunk
    return {"workload": "per-sample GN norms 784-64-64-10, vmap(jacrev) + K x K eig, f64",
            "samples": done, "seconds": dt, "samples_per_s": done / dt}


def bench_hvp(repeats, batch):
    x, y = mnist10k()
    xj, yj = jnp.asarray(x[:batch]), jnp.asarray(y[:batch])
    params = init([784, 64, 64, 10])
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(1), flat.shape, jnp.float64)
    g = jax.grad(lambda t: loss(unravel(t), xj, yj))
    hvp = jax.jit(lambda t, v: jax.jvp(g, (t,), (v,))[1])
    med, best = timed(lambda: hvp(flat, v), repeats)
    # The cached-forward analogue: jax.linearize evaluates the primal once and
    # returns a JVP that reuses it.
    _, lin = jax.linearize(g, flat)
    lin = jax.jit(lin)
    lmed, lbest = timed(lambda: lin(v), repeats)
    return {"workload": f"HVP jax.jvp(jax.grad) 784-64-64-10, batch {batch}, f64",
            "median_ms": 1e3 * med, "min_ms": 1e3 * best, "hvps_per_s": 1.0 / med,
            "linearized_median_ms": 1e3 * lmed, "linearized_min_ms": 1e3 * lbest}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="?", default="all", choices=["dense", "gnnorm", "hvp", "all"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gn-samples", type=int, default=1000)
    ap.add_argument("--json")
    ap.add_argument("--bench-json", help="also write rows in the `landscape bench --peers` format")
    a = ap.parse_args()
    res = {"peer": "jax", "jax": jax.__version__, "device": str(jax.devices()[0])}
    if a.which in ("dense", "all"):
        res["dense"] = bench_dense(a.repeats)
    if a.which in ("gnnorm", "all"):
        res["gnnorm"] = bench_gnnorm(a.gn_samples, 100)
    if a.which in ("hvp", "all"):
        res["hvp"] = bench_hvp(max(a.repeats, 20), 1000)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.bench_json:
        rows = []
        if "dense" in res:
            rows.append({"workload": "dense_digits", "dtype": "f64", "seconds": res["dense"]["median_s"],
                         "method": "jax.jit(jax.hessian)"})
        if "gnnorm" in res:
            g = res["gnnorm"]
            rows.append({"workload": "gn_norms", "dtype": "f64", "seconds": 10000 / g["samples_per_s"],
                         "method": f"vmap(jacrev) + K x K eigvalsh, {g['samples']} samples timed, scaled to 10,000"})
        if "hvp" in res:
            rows.append({"workload": "hvp_b1000", "dtype": "f64",
                         "seconds": min(res["hvp"]["median_ms"], res["hvp"]["linearized_median_ms"]) / 1e3,
                         "method": "jax.jvp(jax.grad) / jax.linearize, faster of the two"})
        kind = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
        with open(a.bench_json, "w") as f:
            json.dump({"peer": f"JAX {jax.__version__}", "device": kind, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
