"""PyTorch peer for `landscape bench` (GPU or CPU): the same workloads, the same shapes.

  dense_digits  torch.func.hessian of the mean CE loss, 64-32-32-10 ReLU + biases
                (P = 3,466), all 1,797 UCI digits.
  dense_mnist   the same for 784-64-64-10 (P = 55,050) over all 10,000 mnist10k samples:
                torch.func.hessian first; when it runs out of memory, the chunked
                jacfwd-of-jacrev route (vmap of jvp(grad) over chunks of basis vectors).
  gn_norms      exact per-sample GN norms, 784-64-64-10, 10,000 samples: per-sample logit
                Jacobians (vmap(jacrev), chunked over samples), then the K x K eigenproblem
                of C^T J J^T C (A = C C^T), torch.linalg.eigvalsh.
  hvp_b1000     one full-Hessian HVP over 1,000 samples: torch.func.jvp(grad) and
  hvp_b10000    double backward (autograd.grad with create_graph); the faster is reported.
  train_step    mean loss and gradient, 784-256-256-10, batch 128.

Timings are medians of `--reps` runs after a warm-up, with torch.cuda.synchronize().
TF32 stays off (PyTorch's default for matmul), so f32 means IEEE f32 on both sides.

Usage: python3 benches/peers/torch_hessian.py --device cuda --json out.json [--only w1,w2]
"""
import argparse
import json
import math
import time

import numpy as np
import torch
from torch.func import grad, hessian, jacrev, jvp, vmap

from peer_data import digits, mnist10k

def sizes_params(sizes, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        ps.append(torch.randn(fo, fi, generator=g, dtype=torch.float64) * math.sqrt(2.0 / fi))
        ps.append(torch.zeros(fo, dtype=torch.float64))
    flat = torch.cat([p.reshape(-1) for p in ps]).to(dtype=dtype, device=device)
    shapes = [p.shape for p in ps]
    return flat, shapes


def unflatten(flat, shapes):
    out, o = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(flat[o:o + n].reshape(s))
        o += n
    return out


def logits_fn(flat, shapes, x):
    ps = unflatten(flat, shapes)
    h = x
    for i in range(0, len(ps), 2):
        h = h @ ps[i].T + ps[i + 1]
        if i + 2 < len(ps):
            h = torch.relu(h)
    return h


def loss_fn(flat, shapes, x, y):
    return torch.nn.functional.cross_entropy(logits_fn(flat, shapes, x), y)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps, device, warm=True):
    if warm:
        fn()
        sync(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), ts


def dense(sizes, x, y, dtype, device, reps, warm=True):
    flat, shapes = sizes_params(sizes, dtype, device)
    f = lambda t: loss_fn(t, shapes, x, y)  # noqa: E731
    try:
        s, ts = timed(lambda: hessian(f)(flat), reps, device, warm)
        return s, ts, "torch.func.hessian"
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
    # Chunked forward-over-reverse: columns H e_j for a chunk of basis vectors at a time.
    p = flat.numel()
    chunk = 512

    def chunked():
        h = torch.empty(p, p, dtype=dtype, device=device)
        g = grad(f)
        for j0 in range(0, p, chunk):
            j1 = min(p, j0 + chunk)
            basis = torch.zeros(j1 - j0, p, dtype=dtype, device=device)
            basis[torch.arange(j1 - j0), torch.arange(j0, j1)] = 1
            h[:, j0:j1] = vmap(lambda v: jvp(g, (flat,), (v,))[1])(basis).T
        return h

    s, ts = timed(chunked, reps, device, warm)
    return s, ts, f"chunked jacfwd(jacrev) (vmap of jvp(grad), {chunk} columns per chunk; torch.func.hessian ran out of memory)"


def gn_norms(x, y, dtype, device, reps):
    sizes = [784, 64, 64, 10]
    flat, shapes = sizes_params(sizes, dtype, device)
    jac = vmap(jacrev(lambda t, xi: logits_fn(t, shapes, xi[None])[0]), in_dims=(None, 0))

    def run():
        out = []
        for s0 in range(0, x.shape[0], 1000):
            xb = x[s0:s0 + 1000]
            j = jac(flat, xb)  # (b, K, P)
            m = j @ j.transpose(1, 2)  # (b, K, K)
            p = torch.softmax(logits_fn(flat, shapes, xb), dim=1)
            s = p.sqrt()
            c = torch.diag_embed(s) - p[:, :, None] * s[:, None, :]
            out.append(torch.linalg.eigvalsh(c.transpose(1, 2) @ m @ c)[:, -1])
        return torch.cat(out)

    s, ts = timed(run, reps, device)
    return s, ts, "vmap(jacrev) per-sample Jacobians + eigvalsh of C^T J J^T C"


def hvp(x, y, dtype, device, reps):
    sizes = [784, 64, 64, 10]
    flat, shapes = sizes_params(sizes, dtype, device)
    v = torch.randn(flat.numel(), dtype=dtype, device=device)
    f = lambda t: loss_fn(t, shapes, x, y)  # noqa: E731
    g = grad(f)
    s1, t1 = timed(lambda: jvp(g, (flat,), (v,))[1], reps, device)

    def double_backward():
        t = flat.detach().requires_grad_(True)
        (gr,) = torch.autograd.grad(f(t), t, create_graph=True)
        (hv,) = torch.autograd.grad(gr @ v, t)
        return hv

    s2, t2 = timed(double_backward, reps, device)
    if s1 <= s2:
        return s1, t1, f"torch.func.jvp(grad) (double backward: {s2:.3e} s)"
    return s2, t2, f"double backward (jvp(grad): {s1:.3e} s)"


def train_step(x, y, dtype, device, reps):
    flat, shapes = sizes_params([784, 256, 256, 10], dtype, device)

    def step():
        t = flat.detach().requires_grad_(True)
        loss = loss_fn(t, shapes, x, y)
        loss.backward()
        return t.grad

    s, ts = timed(step, reps, device)
    return s, ts, "autograd loss.backward()"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="f64,f32")
    ap.add_argument("--only", default="dense_digits,dense_mnist,gn_norms,hvp_b1000,hvp_b10000,train_step")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    dev = a.device
    dx, dy = digits()
    mx, my = mnist10k()
    results = []
    for dt in a.dtypes.split(","):
        dtype = {"f32": torch.float32, "f64": torch.float64}[dt]
        X = lambda arr: torch.tensor(arr, dtype=dtype, device=dev)  # noqa: E731
        Y = lambda arr: torch.tensor(arr, dtype=torch.int64, device=dev)  # noqa: E731
        for w in a.only.split(","):
            try:
                if w == "dense_digits":
                    s, ts, how = dense([64, 32, 32, 10], X(dx), Y(dy), dtype, dev, a.reps)
                elif w == "dense_mnist":
                    s, ts, how = dense([784, 64, 64, 10], X(mx), Y(my), dtype, dev, 1, warm=False)
                elif w == "gn_norms":
                    s, ts, how = gn_norms(X(mx), Y(my), dtype, dev, a.reps)
                elif w in ("hvp_b1000", "hvp_b10000"):
                    b = 1000 if w == "hvp_b1000" else 10000
                    s, ts, how = hvp(X(mx[:b]), Y(my[:b]), dtype, dev, max(a.reps, 10))
                elif w == "train_step":
                    s, ts, how = train_step(X(mx[:128]), Y(my[:128]), dtype, dev, max(a.reps, 20))
                else:
                    raise SystemExit(f"unknown workload {w}")
            except torch.OutOfMemoryError as e:
                print(f"{w} {dt}: out of memory ({e})", flush=True)
                torch.cuda.empty_cache()
                continue
            print(f"{w} {dt}: {s:.4e} s  [{how}]", flush=True)
            results.append({"workload": w, "dtype": dt, "seconds": s, "seconds_all": ts, "method": how})
            if dev == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    with open(a.json, "w") as f:
        json.dump({"peer": f"PyTorch {torch.__version__}", "device": dev, "device_name": name,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
