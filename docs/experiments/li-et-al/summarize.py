#!/usr/bin/env python3
"""Prints the tables of docs/experiments/li-et-al.md from the committed JSON results
(docs/experiments/li-et-al/results/*.json). Usage: summarize.py [RESULTS_DIR]"""
import glob, json, os, sys

R = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")


def load(name):
    p = os.path.join(R, name)
    return json.load(open(p))["results"] if os.path.exists(p) else None


def at(r, key, a):
    i = min(range(len(r["alpha"])), key=lambda k: abs(r["alpha"][k] - a))
    return r[key][i]


print("| batch | weight decay | steps | train loss | test error | filter-norm. rise at +-0.5 | unnormalised rise at +-0.05 |")
print("|---|---|---|---|---|---|---|")
for wd in ["0", "5e-4"]:
    for bs in sorted({int(p.split("_bs")[1].split("_")[0]) for p in glob.glob(os.path.join(R, "train_bs*_wd*.json"))}):
        t = load(f"train_bs{bs}_wd{wd}.json")
        f = load(f"filter_bs{bs}_wd{wd}.json")
        u = load(f"raw_bs{bs}_wd{wd}.json")
        if not t:
            continue
        fin = t["final"]
        steps = sum(e["steps"] for e in t["epochs"])
        l0 = at(f, "train_loss", 0.0)
        fr = (at(f, "train_loss", -0.5) + at(f, "train_loss", 0.5)) / 2 - l0
        ur = (at(u, "train_loss", -0.05) + at(u, "train_loss", 0.05)) / 2 - at(u, "train_loss", 0.0)
        print(f"| {bs} | {wd} | {steps} | {fin['train_loss']:.4f} | {100 * fin['test_error']:.2f}% | {fr:.3f} | {ur:.3f} |")

print()
print("| interpolation (wd) | alpha | train loss | test error |")
print("|---|---|---|---|")
for wd in ["0", "5e-4"]:
    r = load(f"interp_wd{wd}.json")
    if r:
        for a in [-0.5, 0.0, 0.5, 1.0, 1.5]:
            print(f"| {wd} | {a} | {at(r, 'train_loss', a):.4f} | {100 * at(r, 'test_error', a):.1f}% |")

print()
print("| network | parameters | train loss | test error | surface: loss at centre / max over grid | lambda_max | lambda_min | abs ratio | surface seconds |")
print("|---|---|---|---|---|---|---|---|---|")
for p in sorted(glob.glob(os.path.join(R, "surface_*.json"))):
    name = os.path.basename(p)[len("surface_"):-len(".json")]
    s = load(os.path.basename(p))
    t = load(f"train_{name}.json")
    maps = s.get("maps", s)
    tl = maps.get("train_loss") if isinstance(maps, dict) else None
    flat = [v for row in tl for v in row] if tl else []
    centre = tl[len(tl) // 2][len(tl[0]) // 2] if tl else float("nan")
    c = s.get("curvature") or {}
    cm = c.get("maps", c)
    def c0(k):
        m = cm.get(k) if isinstance(cm, dict) else None
        if m is None:
            return float("nan")
        return m[len(m) // 2][len(m[0]) // 2]
    print(f"| {name} | {t['num_params'] if t else '?'} | {t['final']['train_loss']:.4f} | {100 * t['final']['test_error']:.2f}% | "
          f"{centre:.4f} / {max(flat) if flat else float('nan'):.3g} | {c0('lambda_max'):.4g} | {c0('lambda_min'):.4g} | {c0('abs_ratio_min_max'):.3g} | {s.get('seconds', float('nan')):.1f} |")
