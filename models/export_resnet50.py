"""Build a ResNet-50 (torchvision's Bottleneck layout, defined here in plain torch: torchvision
is not installed) with deterministic, data-calibrated weights and export it to ONNX with every
BatchNormalization kept as its own node.

Run by models/fetch.py with the export venv's python (torch 2.13.0, onnx, onnxruntime, Pillow);
not meant for the project venv. Offline: there are no pretrained weights, so the weights are
made here, deterministically:

1. seed 0 (one torch.Generator, float64 draws cast to float32): convolutions kaiming-normal
   (fan_out, ReLU gain, as torchvision), BatchNorm gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2),
   running mean ~ N(0, 0.5), running var ~ U(0.5, 2) (non-trivial, so Conv+BN folding is
   really exercised), fc as torch's nn.Linear default (uniform +-1/sqrt(2048));
2. BatchNorm running statistics calibrated on --calib-images real photo crops
   (models/inputs.imagenet_batch, split "calib") in train mode with momentum=None (a cumulative
   average over chunks of 16), so every layer sees well-scaled activations. Contiguous NCHW on
   purpose: channels_last is ~25% faster here but its BN statistics depend on the thread count;
   NCHW gave the same bits with 1 and 2 threads;
3. the classifier calibrated on the pooled features of that same pass: its bias centres each
   logit over the crops and its weight is scaled so the logits' spread is LOGIT_STD; otherwise
   the feature mean, the same for every photo, decides the arg-max and every photo gets one
   class.

The weights' sha256 (export_common.weights_sha256 over the state dict) is compared with the
pin in models/registry.json and recorded.

Export: torch.onnx.export(dynamo=False, opset 17, training=TrainingMode.PRESERVE on an eval()
model, do_constant_folding=False). The legacy exporter folds BatchNormalization into the
preceding Conv when it exports in EVAL mode with constant folding on; PRESERVE skips that
pass and, the model being in eval mode, writes BatchNormalization(training_mode=0), which uses
the running statistics. Input ``input`` float32 [N, 3, 224, 224] (N dynamic), output ``logits``
float32 [N, 1000].

Checks (failing ones exit 1 and leave no model): 53 Conv and 53 BatchNormalization nodes,
each Conv weight and each BN parameter equal byte for byte to the torch tensor it came from
(nothing folded); onnx.checker full check; onnxruntime (optimizations off) against torch
eval() on held-out photos (split "eval") at batch sizes 1, 3 and 12: max relative error
<= MAX_REL_ERR and top-1 agreement; finite, spread-out logits. The record goes to
<stem>.export.json beside the model, written last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export_common as common  # models/export_common.py
import inputs  # models/inputs.py
import numpy as np
import torch
from torch import nn

NUM_BN = 53
NUM_CONV = 53
MAX_REL_ERR = 1e-4
MIN_TOP1_AGREEMENT = 0.95  # a near-tie may flip; more than that is a broken export
LOGIT_STD = 2.0
CALIB_CHUNK = 16
EVAL_BATCHES = ((1, 101), (3, 102), (12, 103))  # (batch size, seed) on the "eval" photos
RECIPE = 2
# Recipe 2: each bottleneck's last BatchNorm gamma ~ U(RESIDUAL_GAMMA), small as in trained
# ResNets (torchvision can even zero-init them). Recipe 1 drew them U(0.5, 1.5) like every other
# gamma: every residual branch then adds as much as the identity carries, and the seeded network
# amplifies any perturbation (per-channel int8 weights alone moved its logits to cosine 0.93), a
# chaos no trained ResNet-50 has.
RESIDUAL_GAMMA = (0.0, 0.25)


# ------------------------------------------------------------------------- the network

def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------------------- weights

def init_weights(model: ResNet50, seed: int, recipe: int = RECIPE) -> None:
    """Deterministic init: float64 draws from one generator, in module order, cast to float32.
    Recipe 2 then redraws every residual branch's last BatchNorm gamma (see RESIDUAL_GAMMA)."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape, kind: str, a: float, b: float) -> torch.Tensor:
        t = torch.empty(tuple(shape), dtype=torch.float64)
        t = t.normal_(a, b, generator=g) if kind == "normal" else t.uniform_(a, b, generator=g)
        return t.float()

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(draw(m.weight.shape, "normal", 0.0, (2.0 / fan_out) ** 0.5))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(draw([c], "uniform", 0.5, 1.5))
                m.bias.copy_(draw([c], "normal", 0.0, 0.2))
                m.running_mean.copy_(draw([c], "normal", 0.0, 0.5))
                m.running_var.copy_(draw([c], "uniform", 0.5, 2.0))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                m.weight.copy_(draw(m.weight.shape, "uniform", -bound, bound))
                m.bias.copy_(draw(m.bias.shape, "uniform", -bound, bound))
        if recipe >= 2:
            lo, hi = RESIDUAL_GAMMA
            for m in model.modules():
                if isinstance(m, Bottleneck):
                    m.bn3.weight.copy_(draw([m.bn3.num_features], "uniform", lo, hi))


def calibrate(model: ResNet50, x: torch.Tensor) -> None:
    """BatchNorm running statistics = cumulative average over chunks of x (momentum=None, train
    mode); the classifier is then centred and scaled on the pooled features of the same pass
    (train-mode features are the eval-mode ones up to the batch statistics: good enough to
    place the logits, and it saves a second pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        feats = torch.cat([model.features(x[i:i + CALIB_CHUNK]) for i in range(0, len(x), CALIB_CHUNK)])
    for m in bns:
        m.momentum = 0.1  # torch's default again: the exported attribute is the usual 0.9
    model.eval()
    calibrate_fc(model, feats)


def calibrate_fc(model: ResNet50, feats: torch.Tensor) -> None:
    """Centre every logit over the calibration crops and scale the logits' spread to LOGIT_STD."""
    with torch.no_grad():
        f = feats.double()
        w = model.fc.weight.double()
        mu = f.mean(dim=0)
        spread = ((f - mu) @ w.T).std()
        w = w * (LOGIT_STD / spread)
        b = model.fc.bias.double() * LOGIT_STD - w @ mu  # keep a little of the random bias
        model.fc.weight.copy_(w.float())
        model.fc.bias.copy_(b.float())


def state_arrays(model: nn.Module) -> list[tuple[str, np.ndarray]]:
    return [(k, v.detach().cpu().numpy()) for k, v in model.state_dict().items()]


# ----------------------------------------------------------------------------- checks

def check_structure(m, state: dict[str, np.ndarray]) -> list[str]:
    """53 Conv and 53 BN nodes whose parameters are the torch tensors themselves."""
    from onnx import numpy_helper

    problems = []
    inits = {t.name: t for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    if len(convs) != NUM_CONV or len(bns) != NUM_BN:
        problems.append(f"{len(convs)} Conv and {len(bns)} BatchNormalization nodes, want {NUM_CONV} and {NUM_BN}")
    for n in bns:
        attrs = {a.name: a for a in n.attribute}
        if "training_mode" in attrs and attrs["training_mode"].i != 0:
            problems.append(f"{n.name}: training_mode={attrs['training_mode'].i}")
        if len(n.output) != 1:
            problems.append(f"{n.name}: {len(n.output)} outputs (training-mode BN)")
    for n in convs + bns:
        if len(n.input) > 2 and n.op_type == "Conv" and n.input[2]:
            problems.append(f"{n.name}: has a bias (a folded BatchNormalization?)")
        params = n.input[1:2] if n.op_type == "Conv" else n.input[1:5]
        for name in params:
            if name not in inits or name not in state:
                problems.append(f"{n.name}: parameter {name!r} is not a torch parameter")
            elif not np.array_equal(numpy_helper.to_array(inits[name]), state[name]):
                problems.append(f"{n.name}: {name} differs from the torch tensor")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="directory of the fetched photos")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--weights-sha256", default="", help="pinned weights sha256 (mismatch: warning)")
    ap.add_argument("--recipe", type=int, default=RECIPE, help="registry export_recipe (1: every BN gamma "
                    "U(0.5, 1.5); 2: residual-branch gammas U(RESIDUAL_GAMMA))")
    args = ap.parse_args()

    import onnx

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = ResNet50()
    init_weights(model, args.seed, args.recipe)
    x_cal = torch.from_numpy(inputs.imagenet_batch(args.calib_images, args.seed, split="calib",
                                                   image_dir=args.images))
    t = time.perf_counter()
    calibrate(model, x_cal)
    calib_s = time.perf_counter() - t
    model.eval()
    arrays = state_arrays(model)
    wsha = common.weights_sha256(arrays)
    state = dict(arrays)

    tmp = common.temp_beside(args.out)
    try:
        t = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(model, (x_cal[:1],), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                              opset_version=args.opset, dynamo=False,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
        export_s = time.perf_counter() - t
        m = onnx.load(str(tmp))
        onnx.checker.check_model(m, full_check=True)
        problems = check_structure(m, state)
        sess = common.ort_session(tmp)
        checks = []
        ys = []
        for n, seed in EVAL_BATCHES:
            x = inputs.imagenet_batch(n, seed, split="eval", image_dir=args.images)
            got = sess.run(["logits"], {"input": x})[0]
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            c = common.compare(ref, got)
            checks.append(c)
            ys.append(ref)
            if not (c["finite"] and c["max_rel_err"] <= MAX_REL_ERR and c["top1_agreement"] >= MIN_TOP1_AGREEMENT):
                problems.append(f"ORT disagrees with torch: {c}")
        spread = common.output_spread(np.concatenate(ys))
        if spread["distinct_top1"] < 3 or not np.isfinite([spread["min"], spread["max"]]).all():
            problems.append(f"logits are not informative on real photos: {spread}")
        if problems:
            return common.refuse("export_resnet50", problems)
        common.publish(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)

    record = {
        **common.record_head("resnet50", args.out, args.recipe, wsha, args.weights_sha256, m),
        "exporter": ("torch.onnx.export(dynamo=False, training=TrainingMode.PRESERVE on eval(), "
                     "do_constant_folding=False)"),
        "weights": (f"seed {args.seed}, recipe {args.recipe}; kaiming-normal convs, random BN gamma/beta"
                    + (f" (residual-branch gammas U{RESIDUAL_GAMMA})" if args.recipe >= 2 else "")
                    + "; BN running stats "
                    f"calibrated on {args.calib_images} 'calib' photo crops (momentum=None, chunks of "
                    f"{CALIB_CHUNK}); fc centred, logit std {LOGIT_STD}"),
        "torch": torch.__version__,
        **common.environment(),
        "torch_threads": torch.get_num_threads(),
        "checks": checks,
        "logit_spread_eval": spread,
        "calibration_seconds": round(calib_s, 2),
        "export_seconds": round(export_s, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    record["batchnorm_nodes"] = record["op_histogram"].get("BatchNormalization", 0)
    common.write_record(args.out.with_name(args.out.stem + ".export.json"), record)
    worst = max(c["max_rel_err"] for c in checks)
    agree = min(c["top1_agreement"] for c in checks)
    print(f"[export] {args.out.name}: opset {record['opset']}, {record['nodes']} nodes "
          f"({record['batchnorm_nodes']} BatchNormalization), {record['size'] / 2**20:.1f} MiB, "
          f"calibration {calib_s:.1f}s, export {export_s:.1f}s; ORT vs torch max rel err {worst:.2e}, "
          f"top-1 agreement {agree:.3f}; {spread['distinct_top1']} distinct top-1 classes on "
          f"{spread['images']} held-out crops; weights sha256 {wsha[:12]}", flush=True)
    if args.weights_sha256 and wsha != args.weights_sha256:
        print(f"[export] warning: resnet50 weights sha256 {wsha} differs from the pin "
              f"{args.weights_sha256} (a different torch/Pillow/CPU?); the model is still checked",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
