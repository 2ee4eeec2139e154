#!/usr/bin/env python3
"""Prints the tables of docs/experiments/li-et-al.md from the committed results
(docs/experiments/li-et-al/results/*.json and the wall times in times.txt).
Usage: summarize.py [RESULTS_DIR]

Reads the layouts the tool writes: `train --json` (results.final, .epochs, .timing),
`line --json` (results.alpha and one list per quantity), and `surface --json`
(results.maps.<key> as rows over grid_y x grid_x, results.curvature as a list of
{x, y, curvature: {lambda_max, lambda_min, ratio, residual_max, residual_min, ...}}
points, results.curvature_maps on the curvature grid). Older surface files without
`maps` print n/a for the loss columns."""
import glob, json, math, os, sys

R = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
NAN = float("nan")
# Li et al. (2018), Table 1: VGG-9 on CIFAR-10, test error (%) at batch 128 / 8192.
LI = {"0": (7.37, 11.07), "5e-4": (6.00, 10.19)}


def load(name):
    p = os.path.join(R, name)
    return json.load(open(p))["results"] if os.path.exists(p) else None


def at(r, key, a):
    """The value of `key` at the alpha nearest `a` (n/a when absent)."""
    if not r or r.get(key) is None:
        return NAN
    i = min(range(len(r["alpha"])), key=lambda k: abs(r["alpha"][k] - a))
    return r[key][i]


def rise(r, a):
    """Mean rise of the training loss at +-a above its value at 0."""
    return (at(r, "train_loss", -a) + at(r, "train_loss", a)) / 2 - at(r, "train_loss", 0.0)


def pct(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def centre(rows):
    return rows[len(rows) // 2][len(rows[0]) // 2] if rows else NAN


def curvature_points(s):
    """The list of curvature points whatever the layout (list of points, or an older dict)."""
    c = s.get("curvature")
    if isinstance(c, list):
        return [(p["x"], p["y"], p["curvature"]) for p in c]
    return []


batches = sorted({int(os.path.basename(p).split("_bs")[1].split("_")[0]) for p in glob.glob(os.path.join(R, "train_bs*_wd*.json"))})
print("| batch | weight decay | steps | train loss | train error | test error | Li et al. test error (VGG-9, CIFAR-10) | filter-norm. rise at +-0.5 | at +-1 | unnormalised rise at +-0.05 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for wd in ["0", "5e-4"]:
    for k, bs in enumerate(batches):
        t = load(f"train_bs{bs}_wd{wd}.json")
        f = load(f"filter_bs{bs}_wd{wd}.json")
        u = load(f"raw_bs{bs}_wd{wd}.json")
        if not t:
            continue
        fin = t["final"]
        steps = sum(e["steps"] for e in t["epochs"])
        li = LI.get(wd, (NAN, NAN))[0 if k == 0 else 1]
        print(f"| {bs} | {wd} | {steps} | {fin['train_loss']:.4g} | {pct(fin['train_error'])} | {pct(fin['test_error'])} | {li:.2f}% | "
              f"{rise(f, 0.5):.3f} | {rise(f, 1.0):.3f} | {rise(u, 0.05):.3f} |")

print()
print("| interpolation (wd) | alpha | train loss | train error | test loss | test error |")
print("|---|---|---|---|---|---|")
for wd in ["0", "5e-4"]:
    r = load(f"interp_wd{wd}.json")
    if r:
        for a in [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]:
            print(f"| {wd} | {a} | {at(r, 'train_loss', a):.4g} | {pct(at(r, 'train_error', a))} | {at(r, 'test_loss', a):.4g} | {pct(at(r, 'test_error', a))} |")
        tl = r["train_loss"]
        inner = [v for a, v in zip(r["alpha"], tl) if 0.0 <= a <= 1.0]
        print(f"| {wd} | max over [0, 1] | {max(inner):.4g} | | | |")

print()
print("| network | parameters | epochs | train loss | test error | surface loss: centre / max over grid | grid | max / centre ratio | lambda_max (model) | lambda_min (model) | abs ratio (model) | max abs ratio over curvature grid | max Lanczos residual | surface seconds |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in sorted(glob.glob(os.path.join(R, "surface_*.json"))):
    name = os.path.basename(p)[len("surface_"):-len(".json")]
    s = load(os.path.basename(p))
    t = load(f"train_{name}.json")
    tl = (s.get("maps") or {}).get("train_loss")
    flat = [v for row in tl for v in row] if tl else []
    c0 = centre(tl)
    pts = curvature_points(s)
    model = next((c for x, y, c in pts if x == 0.0 and y == 0.0), None) or {}
    ratios = [c["ratio"] for _, _, c in pts if c.get("ratio") is not None]
    res = [max(c.get("residual_max", NAN), c.get("residual_min", NAN)) for _, _, c in pts]
    g = f"{len(s['grid_x'])}x{len(s['grid_y'])}, {s['samples']} samples; curvature {int(math.sqrt(len(pts))) if pts else 0}^2 on {s.get('curvature_samples')}"
    print(f"| {name} | {t['num_params'] if t else '?'} | {len(t['epochs']) if t else '?'} | {t['final']['train_loss']:.4f} | {pct(t['final']['test_error'])} | "
          f"{c0:.4f} / {max(flat) if flat else NAN:.4g} | {g} | {(max(flat) / c0) if flat else NAN:.3g} | {model.get('lambda_max', NAN):.4g} | {model.get('lambda_min', NAN):.4g} | "
          f"{model.get('ratio', NAN):.3g} | {max(ratios) if ratios else NAN:.3g} | {max(res) if res else NAN:.2g} | {s.get('surface_seconds', NAN):.1f} |")

print()
tp = os.path.join(R, "times.txt")
if os.path.exists(tp):
    tot = {"train": 0.0, "line": 0.0, "surface": 0.0}
    n = {k: 0 for k in tot}
    for ln in open(tp):
        sec = float(ln.split()[0])
        for k in tot:
            if f" {k} " in ln:
                tot[k] += sec
                n[k] += 1
    print("| stage | commands | wall seconds (niced, one thread each, two jobs at a time) |")
    print("|---|---|---|")
    for k in tot:
        print(f"| {k} | {n[k]} | {tot[k]:.0f} |")
    print(f"| all | {sum(n.values())} | {sum(tot.values()):.0f} |")
