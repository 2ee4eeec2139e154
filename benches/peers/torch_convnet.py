#!/usr/bin/env python3
"""PyTorch (CPU) and PyHessian peers for the network-engine workloads of `landscape bench`.

Same model and data as ours: the sphere paper's ConvNet, width 16, on the first
mnist10k training images (1 x 28 x 28, pixels / 255), with the deterministic
weights of `models.fill_deterministic` (= `Network::fill_deterministic`).

* convnet_step: loss + gradient (forward + backward), train-mode BN, batch 128, float32;
* convnet_hvp_n1000: one HVP by double backward on 1,000 images, float64, eval-mode BN;
* convnet_top_eig_n2000: PyHessian's `eigenvalues(top_n=1)` (its defaults: maxIter 100,
  tol 1e-3) on 2,000 images, float64, eval-mode BN, with the value, and the relative
  residual ||Hv - lv|| / |l| of its vector measured with our own exact HVP.

  python3 benches/peers/torch_convnet.py --threads 2 --json torch_convnet.json

Writes `{"peer": "pytorch", "device": "cpu", "results": [...]}` for `landscape bench --peers`.
"""

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from models import build, fill_deterministic  # noqa: E402

DATA = os.path.join(HERE, "..", "..", "data", "mnist10k")


def mnist(n):
    with gzip.open(os.path.join(DATA, "train-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n] / 255.0
    with gzip.open(os.path.join(DATA, "train-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n].astype(np.int64)
    return torch.tensor(x), torch.tensor(y)


def median_time(f, reps, warmup=1):
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def model(dtype):
    m = build("convnet", (1, 28, 28), 10, width=16)
    fill_deterministic(m)
    return m.to(dtype)


def hvp_fn(m, x, y):
    params = [p for p in m.parameters()]

    def hv(vs):
        loss = F.cross_entropy(m(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        inner = sum((gi * vi).sum() for gi, vi in zip(g, vs))
        return torch.autograd.grad(inner, params)

    return params, hv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--skip-pyhessian", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = []

    # (a) forward + backward, f32, batch 128, train-mode BN.
    m = model(torch.float32).train()
    x, y = mnist(128)
    x = x.float()
    params = list(m.parameters())

    def step():
        loss = F.cross_entropy(m(x), y)
        torch.autograd.grad(loss, params)

    t, ts = median_time(step, max(a.reps, 10), warmup=3)
    results.append({"workload": "convnet_step", "dtype": "f32", "seconds": t, "all": ts, "method": "autograd loss + gradient"})
    print(f"convnet_step f32: {t:.4f} s")

    # (b) one HVP on 1,000 images, f64, eval-mode BN.
    m = model(torch.float64).eval()
    x, y = mnist(1000)
    params, hv = hvp_fn(m, x, y)
    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    t, ts = median_time(lambda: hv(v), a.reps)
    results.append({"workload": "convnet_hvp_n1000", "dtype": "f64", "seconds": t, "all": ts, "method": "double backward (autograd.grad create_graph)"})
    print(f"convnet_hvp_n1000 f64: {t:.4f} s")

    # (c) PyHessian's top eigenvalue on 2,000 images, f64, eval-mode BN.
    if not a.skip_pyhessian:
        x, y = mnist(2000)
        entry = {"workload": "convnet_top_eig_n2000", "dtype": "f64", "method": "pyhessian eigenvalues(top_n=1), maxIter 100, tol 1e-3"}
        try:
            from pyhessian import hessian as PyHessian

            m = model(torch.float64).eval()
            crit = torch.nn.CrossEntropyLoss()
            t0 = time.perf_counter()
            h = PyHessian(m, crit, data=(x, y), cuda=False)
            vals, vecs = h.eigenvalues(top_n=1)
            secs = time.perf_counter() - t0
            lam = float(vals[0])
            params, hvf = hvp_fn(m, x, y)
            vv = [t_.detach().to(torch.float64) for t_ in vecs[0]]
            nv = torch.sqrt(sum((t_ * t_).sum() for t_ in vv))
            vv = [t_ / nv for t_ in vv]
            hvv = hvf(vv)
            res = float(torch.sqrt(sum(((a_ - lam * b_) ** 2).sum() for a_, b_ in zip(hvv, vv))))
            entry.update({"seconds": secs, "value": lam, "residual": res, "relative_residual": res / abs(lam)})
            print(f"pyhessian top eigenvalue {lam:.12e} in {secs:.2f} s, relative residual {res / abs(lam):.2e}")
        except Exception as e:  # record the failure instead of hiding it
            entry["error"] = f"{type(e).__name__}: {e}"
            print(f"pyhessian failed: {entry['error']}")
        results.append(entry)

    out = {
        "peer": "pytorch",
        "device": "cpu",
        "torch_version": torch.__version__,
        "threads": a.threads,
        "machine": {"processor": platform.processor(), "platform": platform.platform()},
        "results": results,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
