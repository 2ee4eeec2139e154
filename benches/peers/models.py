"""Reference PyTorch definitions of landscape's architecture presets.

The state-dict names here are the tensor names of landscape's model files, so
`model.load_state_dict(safetensors.torch.load_file(path), strict=True)` loads a
file `landscape train --arch ...` wrote, and `safetensors.torch.save_file(
model.state_dict(), path)` writes a file `landscape --arch ...` reads.

* `mlp`: `layers.{p}` linear layers (`weight` out x in, optional `bias`); with
  `batchnorm=True` each hidden layer has `layers.{p}.bn` (BatchNorm1d, affine)
  after the linear map and before the activation. The input is flattened; the
  last layer has no BatchNorm and no activation.
* `convnet`: the sphere paper's scale-invariant ConvNet (seed 001, Table 1; the
  layer order of tipt0p/three_regimes_on_the_sphere's convnet_si): `conv_layers`
  (3x3 bias-free convs c, 2c, 4c, 8c, BatchNorm2d affine=False, ReLU, 2x2 max
  pools after the last three) and `linear_layers` (global max pool in place of
  the paper's MaxPool2d(4), flatten, Linear(8c, classes) with bias).
* `resnet{20,56,110}` and `-noshort`: Li et al.'s CIFAR ResNets (BasicBlocks,
  16/32/64 planes, option-B 1x1 projection shortcuts; `-noshort` blocks have
  no shortcut and no addition) with a global average pool in place of
  avg_pool2d(8), then `linear`.
* `vgg9`: Li et al.'s VGG-9 (conv biases, BatchNorm2d, ceil-mode 2x2 pools,
  `fc` = Linear + BatchNorm1d + ReLU, `classifier`).

All BatchNorm layers use eps 1e-5 and momentum 0.1 (PyTorch's defaults).

`fill_deterministic(model)` sets every state-dict tensor by the closed-form rule
of `Network::fill_deterministic` in `src/nn/network.rs`, so both sides hold the
same weights without a weight file. `det_inputs` and `det_direction` are the
fixed inputs and HVP direction of the fixtures (tests/fixtures/torch/README.md).

  python3 benches/peers/models.py --self-test   # parameter counts + safetensors round trip
"""

import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "identity": nn.Identity,
}

# Parameter counts on 3 x 32 x 32 inputs, 10 classes (Li et al.'s models; the
# ConvNet entry is width 32, whose conv weights alone are 387,936).
PARAM_COUNTS = {
    "resnet20": 272_474,
    "resnet20-noshort": 269_722,
    "resnet56": 855_770,
    "resnet56-noshort": 853_018,
    "resnet110": 1_730_714,
    "resnet110-noshort": 1_727_962,
    "vgg9": 2_789_706,
}


class MlpLayer(nn.Module):
    def __init__(self, fan_in, fan_out, bias, batchnorm):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(fan_out)) if bias else None
        self.bn = nn.BatchNorm1d(fan_out) if batchnorm else None
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        z = F.linear(x, self.weight, self.bias)
        return self.bn(z) if self.bn is not None else z


class Mlp(nn.Module):
    def __init__(self, input_dim, hidden, classes, bias=True, batchnorm=False, activation="relu"):
        super().__init__()
        widths = [input_dim] + list(hidden) + [classes]
        n = len(widths) - 1
        self.layers = nn.ModuleList(
            MlpLayer(widths[p], widths[p + 1], bias, batchnorm and p + 1 < n) for p in range(n)
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, x):
        h = x.flatten(1)
        for p, layer in enumerate(self.layers):
            h = layer(h)
            if p + 1 < len(self.layers):
                h = self.act(h)
        return h


class ConvNet(nn.Module):
    def __init__(self, in_channels, width, classes):
        super().__init__()
        c = width

        def block(i, o, pool):
            mods = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o, affine=False), nn.ReLU()]
            return mods + ([nn.MaxPool2d(2)] if pool else [])

        self.conv_layers = nn.Sequential(
            *block(in_channels, c, False),
            *block(c, 2 * c, True),
            *block(2 * c, 4 * c, True),
            *block(4 * c, 8 * c, True),
        )
        self.linear_layers = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * c, classes))

    def forward(self, x):
        return self.linear_layers(self.conv_layers(x))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.use_shortcut = shortcut
        if shortcut:
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNetCifar(nn.Module):
    def __init__(self, depth, shortcut, in_channels, classes):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate([16, 32, 64]):
            blocks = []
            for j in range(n):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class Vgg9(nn.Module):
    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]

    def __init__(self, in_channels, height, width, classes):
        super().__init__()
        layers = []
        c_in, h, w = in_channels, height, width
        for x in self.CFG:
            if x == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            else:
                layers += [nn.Conv2d(c_in, x, 3, padding=1), nn.BatchNorm2d(x), nn.ReLU()]
                c_in = x
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(256 * h * w, 256), nn.BatchNorm1d(256), nn.ReLU())
        self.classifier = nn.Linear(256, classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(self.fc(out.view(out.size(0), -1)))


def build(preset, input_shape=(3, 32, 32), classes=10, width=16, **opts):
    """The reference module of a preset on inputs of shape (C, H, W)."""
    c, h, w = input_shape
    if preset == "mlp":
        return Mlp(
            c * h * w,
            opts.get("hidden", [64]),
            classes,
            bias=opts.get("bias", True),
            batchnorm=opts.get("batchnorm", False),
            activation=opts.get("activation", "relu"),
        )
    if opts:
        raise ValueError(f"{preset}: unknown options {sorted(opts)}")
    if preset == "convnet":
        return ConvNet(c, width, classes)
    if preset == "vgg9":
        return Vgg9(c, h, w, classes)
    if preset.startswith("resnet"):
        name = preset[: -len("-noshort")] if preset.endswith("-noshort") else preset
        depth = int(name[len("resnet"):])
        return ResNetCifar(depth, not preset.endswith("-noshort"), c, classes)
    raise ValueError(f"unknown preset {preset}")


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def sin_table(offset, step, n, shift=0.0):
    """sin(offset + step*i + shift) for i < n: the argument in f64 in that order of
    operations, the sine by the C library (math.sin, as Rust's f64::sin), so both
    sides see the same bits (numpy's SIMD sin may differ by an ulp on some CPUs)."""
    arg = offset + step * np.arange(n, dtype=np.float64) + shift
    return np.fromiter(map(math.sin, arg.tolist()), dtype=np.float64, count=n)


def fill_deterministic(model):
    """Sets every state-dict tensor by landscape's closed-form rule.

    Over `model.state_dict()` in order, skipping `num_batches_tracked` (set to 0),
    tensor t's element i (flat, row-major PyTorch shape) gets
    b = sin(0.5 + 0.731 i + 1.37 t), mapped to: weights of rank >= 2
    b / sqrt(fan_in) (fan_in = prod(shape[1:])), BatchNorm weights 1 + 0.1 b,
    biases 0.1 b, running means 0.1 b, running variances 1 + 0.5 b^2.
    """
    sd = model.state_dict()
    t = 0
    with torch.no_grad():
        for name, tensor in sd.items():
            if name.endswith("num_batches_tracked"):
                tensor.zero_()
                continue
            base = sin_table(0.5, 0.731, tensor.numel(), 1.37 * t)
            if name.endswith("running_mean"):
                v = 0.1 * base
            elif name.endswith("running_var"):
                v = 1.0 + 0.5 * base * base
            elif tensor.dim() >= 2:
                fan = int(np.prod(tensor.shape[1:]))
                v = base / math.sqrt(fan)
            elif name.endswith(".bias"):
                v = 0.1 * base
            elif name.endswith(".weight"):
                v = 1.0 + 0.1 * base
            else:
                raise ValueError(f"fill_deterministic: no rule for {name}")
            tensor.copy_(torch.from_numpy(v.reshape(tuple(tensor.shape))).to(tensor.dtype))
            t += 1
    return model


def det_inputs(n, shape, dtype=torch.float64):
    """x[j] = sin(0.3 + 0.173 j) over the flat (n, C, H, W) array."""
    numel = n * int(np.prod(shape))
    return torch.from_numpy(sin_table(0.3, 0.173, numel)).to(dtype).reshape(n, *shape)


def det_direction(model):
    """v[t][i] = sin(2.0 + 0.417 i + 0.91 t) for the t-th parameter tensor."""
    return [
        torch.from_numpy(sin_table(2.0, 0.417, p.numel(), 0.91 * t)).to(p.dtype).reshape(p.shape)
        for t, (_, p) in enumerate(model.named_parameters())
    ]


def self_test():
    """Parameter counts on 3 x 32 x 32 and a strict safetensors round trip."""
    import os
    import tempfile

    from safetensors.torch import load_file, save_file

    ok = True
    for preset, want in PARAM_COUNTS.items():
        got = num_params(build(preset, (3, 32, 32), 10))
        print(f"{preset:18s} P = {got:>9,d}  (expected {want:,d}){'' if got == want else '  MISMATCH'}")
        ok &= got == want
    conv = build("convnet", (3, 32, 32), 10, width=32)
    cw = sum(p.numel() for n, p in conv.named_parameters() if n.startswith("conv_layers"))
    print(f"{'convnet (c=32)':18s} P = {num_params(conv):>9,d}  conv weights {cw:,d} (expected 387,936)")
    ok &= cw == 387_936
    cases = [
        ("mlp", (1, 3, 3), {"hidden": [5, 4], "batchnorm": True, "activation": "tanh"}),
        ("mlp", (1, 3, 3), {"hidden": [5, 4], "bias": False}),
        ("convnet", (1, 28, 28), {"width": 4}),
        ("resnet20", (3, 32, 32), {}),
        ("resnet20-noshort", (3, 32, 32), {}),
        ("vgg9", (3, 32, 32), {}),
    ]
    with tempfile.TemporaryDirectory() as d:
        for preset, shape, opts in cases:
            a = fill_deterministic(build(preset, shape, 10, **opts).double())
            x = det_inputs(2, shape)
            a.train()
            a(x)  # moves the running statistics and num_batches_tracked off their fill
            path = os.path.join(d, "m.safetensors")
            save_file(a.state_dict(), path)
            b = build(preset, shape, 10, **opts).double()
            b.load_state_dict(load_file(path), strict=True)
            same = all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
            a.eval(), b.eval()
            same &= torch.equal(a(x), b(x))
            print(f"safetensors round trip {preset} {shape}: {'ok' if same else 'MISMATCH'}")
            ok &= same
    print("self-test", "passed" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    if "--self-test" in sys.argv:
        torch.set_num_threads(2)
        sys.exit(0 if self_test() else 1)
    print(__doc__)
