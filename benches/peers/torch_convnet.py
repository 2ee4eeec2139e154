#!/usr/bin/env python3
"""PyTorch (CPU) and PyHessian peers for the network-engine workloads of `landscape bench`.

Same model and data as ours: the sphere paper's ConvNet, width 16, on the first
mnist10k training images (1 x 28 x 28, pixels / 255), with the deterministic
weights of `models.fill_deterministic` (= `Network::fill_deterministic`).

* convnet_step: loss + gradient (forward + backward), train-mode BN, batch 128, float32;
  median of >= 10 runs after 3 warm-up runs.
* convnet_hvp_n1000: one HVP of the mean loss by double backward on 1,000 images,
  float64, eval-mode BN: the whole batch at once and in chunks of --chunk images
  (summed; exact, as eval-mode BN makes the loss a per-sample mean); the faster is
  the row, both are recorded.
* convnet_top_eig_n2000: the largest Hessian eigenvalue on 2,000 images, float64,
  eval-mode BN, two rows:
  - PyHessian's `hessian(model, criterion, dataloader=...).eigenvalues(top_n=1)` at its
    defaults (power iteration, maxIter 100, tol 1e-3 on the relative change), its
    dataloader holding the images in batches of --chunk (faster here than its single-
    batch `data=` mode, which keeps the 2,000-image graph); the time, the value, the
    number of HVPs, the relative residual ||Hv - lv|| / |l| of its vector and its
    relative error against the reference below;
  - the reference: scipy's eigsh (ARPACK Lanczos, which='LA') on a LinearOperator of
    chunked double-backward HVPs, tol --ref-tol (1e-12), random start; the time, the
    value, the number of HVPs and the relative residual of its vector.

  python3 benches/peers/torch_convnet.py --threads 2 --json torch_convnet.json
  python3 benches/peers/torch_convnet.py --samples 128,200,300 --reps 3   # a quick run

Writes `{"peer": "PyTorch <version>", "device": "cpu", "results": [...]}` for
`landscape bench --peers`; workload names carry the sample counts actually used. If
PyHessian fails (import or run), its row holds the error text instead of a time.
"""

import argparse
import gzip
import importlib
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


def mnist(n, dtype):
    """The first n training images (N, 1, 28, 28), pixels / 255, and their labels."""
    with gzip.open(os.path.join(DATA, "train-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    if n > count:
        raise SystemExit(f"mnist10k has {count} training images, {n} requested")
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n] / 255.0
    with gzip.open(os.path.join(DATA, "train-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n].astype(np.int64)
    return torch.tensor(x, dtype=dtype), torch.tensor(y)


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


def hvp_fn(m, x, y, chunk=None):
    """v -> H v for the mean CE loss over (x, y), by double backward, the batch whole
    (chunk None) or in chunks whose summed losses are divided by the batch size."""
    params = list(m.parameters())
    n = x.shape[0]
    step = n if chunk is None else chunk

    def hv(vs):
        out = None
        for s in range(0, n, step):
            loss = F.cross_entropy(m(x[s : s + step]), y[s : s + step], reduction="sum") / n
            g = torch.autograd.grad(loss, params, create_graph=True)
            inner = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            h = torch.autograd.grad(inner, params)
            out = list(h) if out is None else [o + hi for o, hi in zip(out, h)]
        return out

    return params, hv


def flat_ops(params):
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def to_list(a):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        return [c.reshape(s) for c, s in zip(torch.split(t, sizes), shapes)]

    def to_flat(ts):
        return torch.cat([t.detach().reshape(-1) for t in ts]).numpy()

    return to_list, to_flat


def relative_residual(hv, to_list, to_flat, vec, lam):
    v = vec / np.linalg.norm(vec)
    r = to_flat(hv(to_list(v))) - lam * v
    return float(np.linalg.norm(r) / abs(lam))


def bench_step(a, results):
    m = model(torch.float32).train()
    x, y = mnist(a.samples[0], torch.float32)
    params = list(m.parameters())

    def step():
        loss = F.cross_entropy(m(x), y)
        torch.autograd.grad(loss, params)

    t, ts = median_time(step, max(a.reps, 10), warmup=3)
    results.append(
        {
            "workload": "convnet_step",
            "dtype": "f32",
            "seconds": t,
            "seconds_all": ts,
            "samples": a.samples[0],
            "method": "autograd loss + gradient, train-mode BN",
        }
    )
    print(f"convnet_step f32 (batch {a.samples[0]}): {t:.4f} s", flush=True)


def bench_hvp(a, results):
    n = a.samples[1]
    m = model(torch.float64).eval()
    x, y = mnist(n, torch.float64)
    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in m.parameters()]
    timings = {}
    for label, chunk in [("whole batch", None), (f"chunks of {a.chunk}", a.chunk)]:
        _, hv = hvp_fn(m, x, y, chunk)
        t, ts = median_time(lambda: hv(v), a.hvp_reps)
        timings[label] = (t, ts)
        print(f"convnet_hvp_n{n} f64, {label}: {t:.4f} s", flush=True)
    best = min(timings, key=lambda k: timings[k][0])
    results.append(
        {
            "workload": f"convnet_hvp_n{n}",
            "dtype": "f64",
            "seconds": timings[best][0],
            "seconds_all": timings[best][1],
            "method": f"double backward (autograd.grad create_graph), {best}",
            "variants": {k: {"seconds": t, "seconds_all": ts} for k, (t, ts) in timings.items()},
        }
    )


def bench_top_eig(a, results):
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = a.samples[2]
    workload = f"convnet_top_eig_n{n}"
    x, y = mnist(n, torch.float64)
    m = model(torch.float64).eval()
    params, hv = hvp_fn(m, x, y, a.chunk)
    to_list, to_flat = flat_ops(params)
    dim = sum(p.numel() for p in params)

    # The reference: ARPACK Lanczos to --ref-tol, or a value from an earlier run (--ref-value).
    calls = [0]
    if a.ref_value is not None:
        lam_ref = a.ref_value
        print(f"{workload} reference value given: {lam_ref:.15e} (no eigsh run)", flush=True)

    def matvec(u):
        calls[0] += 1
        return to_flat(hv(to_list(np.asarray(u).reshape(-1))))

    if a.ref_value is None:
        op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(dim)
        t0 = time.perf_counter()
        vals, vecs = eigsh(op, k=1, which="LA", tol=a.ref_tol, v0=v0, maxiter=10 * dim)
        ref_secs = time.perf_counter() - t0
        lam_ref = float(vals[0])
        ref_res = relative_residual(hv, to_list, to_flat, vecs[:, 0], lam_ref)
        print(
            f"{workload} reference (eigsh tol {a.ref_tol:g}): {lam_ref:.15e} in {ref_secs:.1f} s, "
            f"{calls[0]} HVPs, relative residual {ref_res:.2e}",
            flush=True,
        )
        results.append(
            {
                "workload": workload,
                "dtype": "f64",
                "seconds": ref_secs,
                "value": lam_ref,
                "hvps": calls[0],
                "relative_residual": ref_res,
                "method": f"scipy eigsh (ARPACK Lanczos, which='LA'), tol {a.ref_tol:g}, random start, "
                f"double-backward HVPs in chunks of {a.chunk}",
            }
        )
    if a.skip_pyhessian:
        return

    for dname in a.pyhessian_dtypes.split(","):
        results.append(pyhessian_run(a, workload, dname, x, y, hv, to_list, to_flat, lam_ref))


def pyhessian_run(a, workload, dname, x, y, hv, to_list, to_flat, lam_ref):
    """PyHessian's top eigenvalue at its defaults in `dname` (f64 or f32); its residual
    and error are measured with the float64 HVP."""
    dt = {"f64": torch.float64, "f32": torch.float32}[dname]
    x, y = x.to(dt), y
    entry = {
        "workload": workload,
        "dtype": dname,
        "method": f"PyHessian eigenvalues(top_n=1) at its defaults (power iteration, maxIter 100, "
        f"tol 1e-3), dataloader of {a.chunk}-image batches",
    }
    try:
        import pyhessian

        ph = importlib.import_module("pyhessian.hessian")
        entry["pyhessian_version"] = getattr(pyhessian, "__version__", None) or _dist_version("pyhessian")
        crit = torch.nn.CrossEntropyLoss()
        dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=a.chunk)
        mp = model(dt).eval()
        torch.manual_seed(0)
        # PyHessian draws its start vector with torch.randn at the default dtype.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        try:
            t0 = time.perf_counter()
            h = ph.hessian(mp, crit, dataloader=dl, cuda=False)
            count = [0]
            inner = h.dataloader_hv_product

            def counted(v):
                count[0] += 1
                return inner(v)

            h.dataloader_hv_product = counted
            pvals, pvecs = h.eigenvalues(top_n=1)
            secs = time.perf_counter() - t0
        finally:
            torch.set_default_dtype(previous)
        lam = float(pvals[0])
        vec = to_flat([t.to(torch.float64) for t in pvecs[0]])
        res = relative_residual(hv, to_list, to_flat, vec, lam)
        rel_err = abs(lam - lam_ref) / abs(lam_ref)
        entry.update(
            {
                "seconds": secs,
                "value": lam,
                "hvps": count[0],
                "relative_residual": res,
                "reference_value": lam_ref,
                "relative_error": rel_err,
            }
        )
        print(
            f"{workload} PyHessian ({dname}): {lam:.15e} in {secs:.1f} s, {count[0]} HVPs, relative error "
            f"{rel_err:.2e}, relative residual {res:.2e}",
            flush=True,
        )
    except Exception as e:  # record the failure instead of hiding it
        entry["error"] = f"{type(e).__name__}: {e}"
        print(f"PyHessian failed: {entry['error']}", flush=True)
    return entry


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--samples", default="128,1000,2000", help="batch of the step, images of the HVP and of the eigenvalue")
    ap.add_argument("--reps", type=int, default=10, help="timed runs of the step (at least 10)")
    ap.add_argument("--hvp-reps", type=int, default=5, help="timed runs of each HVP variant")
    ap.add_argument("--chunk", type=int, default=100, help="images per chunk of the chunked HVPs and PyHessian's batches")
    ap.add_argument("--ref-tol", type=float, default=1e-12, help="eigsh tolerance of the reference eigenvalue")
    ap.add_argument("--ref-value", type=float, help="reference eigenvalue from an earlier run (skips the eigsh solve)")
    ap.add_argument("--only", default="step,hvp,eig", help="comma list of step, hvp, eig")
    ap.add_argument("--skip-pyhessian", action="store_true")
    ap.add_argument("--pyhessian-dtypes", default="f64", help="comma-separated: f64, f32 (PyHessian runs in each)")
    ap.add_argument("--json")
    a = ap.parse_args()
    a.samples = [int(s) for s in a.samples.split(",")]
    if len(a.samples) != 3:
        raise SystemExit("--samples takes three counts: step batch, HVP images, eigenvalue images")
    torch.set_num_threads(a.threads)
    only = set(a.only.split(","))
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    results = []
    if "step" in only:
        bench_step(a, results)
    if "hvp" in only:
        bench_hvp(a, results)
    if "eig" in only:
        bench_top_eig(a, results)
    out = {
        "peer": f"PyTorch {torch.__version__}",
        "device": "cpu",
        "device_name": cpu_model(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {
            "processor": platform.processor(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "wall_seconds": time.perf_counter() - t_start,
        "results": results,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
