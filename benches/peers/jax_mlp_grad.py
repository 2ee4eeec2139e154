"""Peer benchmark: forward + backward of a 784-256-256-10 ReLU MLP (biases,
softmax cross-entropy, mean over the batch) at batch 128 with jax.jit(jax.grad),
on the CPU, f32 and f64. Same workload as `cargo bench --bench mlp`.

Usage: python3 benches/peers/jax_mlp_grad.py [--repeats 200] [--json out.json]
Prints the median and minimum time per call in milliseconds.
"""
import argparse
import json
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def init(key, sizes, dtype):
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        s = 1.0 / np.sqrt(fan_in)
        w = jax.random.uniform(kw, (fan_out, fan_in), dtype, -s, s)
        b = jax.random.uniform(kb, (fan_out,), dtype, -s, s)
        params.append((w, b))
    return params


def loss(params, x, y):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i + 1 < len(params):
            h = jax.nn.relu(h)
    logz = jax.nn.logsumexp(h, axis=1)
    picked = jnp.take_along_axis(h, y[:, None], axis=1)[:, 0]
    return jnp.mean(logz - picked)


def bench(dtype, repeats):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(128, 784)), dtype)
    y = jnp.asarray(np.arange(128) % 10)
    params = init(jax.random.PRNGKey(0), [784, 256, 256, 10], dtype)
    g = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(g(params, x, y))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(g(params, x, y))
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = {
        "peer": "jax.jit(jax.value_and_grad)",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "machine": platform.processor() or platform.machine(),
        "f32": bench(jnp.float32, args.repeats),
        "f64": bench(jnp.float64, args.repeats),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
