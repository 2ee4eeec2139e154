"""The embedded datasets for the peer scripts, read from data/ exactly as landscape reads them
(digits pixels / 16, mnist10k pixels / 255, train then test rows)."""
import gzip
import os
import struct

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def digits():
    with gzip.open(os.path.join(ROOT, "data/uci-digits/digits.csv.gz"), "rt") as f:
        rows = [list(map(float, line.split(","))) for line in f if line.strip()]
    a = np.array(rows)
    return a[:, :-1] / 16.0, a[:, -1].astype(np.int64)


def mnist10k():
    def idx(name):
        with gzip.open(os.path.join(ROOT, "data/mnist10k", name), "rb") as f:
            data = f.read()
        magic, n = struct.unpack(">II", data[:8])
        if magic == 0x803:
            r, c = struct.unpack(">II", data[8:16])
            return np.frombuffer(data[16:], np.uint8).reshape(n, r * c) / 255.0
        return np.frombuffer(data[8:], np.uint8).astype(np.int64)

    x = np.concatenate([idx("train-images-idx3-ubyte.gz"), idx("t10k-images-idx3-ubyte.gz")])
    y = np.concatenate([idx("train-labels-idx1-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")])
    return x, y
