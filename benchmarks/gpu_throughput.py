"""Benchmark: DP-SGD against non-private training step throughput for a small CNN, on one device.

    python benchmarks/gpu_throughput.py [--device cuda] [--batch 256 1024] [--steps 50] [--out FILE]

Four ways, measured side by side in one process on the same synthetic batches (1 x 28 x 28 images,
10 classes; throughput does not depend on the pixel values): plain SGD, Opacus DP-SGD with
per-sample gradients from hooks (what fedmodel's owners use), and Opacus DP-SGD with ghost
clipping (``grad_sample_mode="ghost"``: per-sample gradient norms without materialising per-sample
gradients), and with per-sample gradients from ``torch.func`` (``functorch``). Fixed-size batches (the throughput of one step; Poisson sampling only changes the size),
fp32, after warm-up steps, timed with the device synchronised. Prints samples/s and the ratios to
the non-private run, and writes the table to ``--out`` if given. Needs torch and opacus only, so it
runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

MODES = ("no DP", "DP (hooks)", "DP (ghost clipping)", "DP (functorch)")
GRAD_SAMPLE_MODE = {"DP (hooks)": "hooks", "DP (ghost clipping)": "ghost", "DP (functorch)": "functorch"}


class SmallCNN(nn.Module):
    """Two 5x5 convolutions (16 and 32 channels) with max-pooling, then a linear layer: no BatchNorm (DP)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class SampleConvNet(nn.Module):
    """The CNN of Opacus' own MNIST example: strided 8x8 and 4x4 convolutions, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 8, 2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, 1)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2, 1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


MODELS = {"cnn": SmallCNN, "samplenet": SampleConvNet}


def measure(mode: str, batch: int, steps: int, warmup: int, device: torch.device, model_name: str = "cnn") -> float:
    """Samples per second of ``steps`` training steps of ``batch`` examples in ``mode``."""
    from opacus import PrivacyEngine

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 4, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch * 4,), generator=g)
    batches = [(x[i * batch:(i + 1) * batch].to(device), y[i * batch:(i + 1) * batch].to(device)) for i in range(4)]
    torch.manual_seed(0)
    model: nn.Module = MODELS[model_name]().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion: nn.Module = nn.CrossEntropyLoss()
    if mode != "no DP":
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        engine = PrivacyEngine(accountant="rdp")
        out = engine.make_private(module=model, optimizer=optimizer, criterion=criterion, data_loader=loader,
                                  noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                                  grad_sample_mode=GRAD_SAMPLE_MODE[mode])
        if "ghost" in mode:
            model, optimizer, criterion, _ = out
        else:
            model, optimizer, _ = out

    def step(i: int) -> None:
        xb, yb = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def throughput_table(device: torch.device, batches: list[int], *, steps: int = 50, warmup: int = 10,
                     model: str = "cnn", tf32: bool = False, echo: bool = True) -> str:
    """Every mode at every batch size, measured side by side; the Markdown table (a RESULTS.md section)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [f"## gpu: {model} DP-SGD throughput, {time.strftime('%Y-%m-%d %H:%M')} on {name} "
             f"(torch {torch.__version__}, opacus {__import__('opacus').__version__})", "",
             f"1 x 28 x 28 inputs, 10 classes, SGD, fp32{' with TF32' if tf32 else ''}, {steps} timed steps after {warmup} warm-up "
             "steps, fixed-size batches; samples/s and the ratio to no DP at the same batch size.", "",
             "| batch | " + " | ".join(MODES) + " | hooks / no DP | ghost / no DP | functorch / no DP |",
             "|---" * (2 * len(MODES)) + "|"]
    for batch in batches:
        rates = [measure(mode, batch, steps, warmup, device, model) for mode in MODES]
        lines.append(f"| {batch} | " + " | ".join(f"{r:,.0f}" for r in rates)
                     + "".join(f" | {r / rates[0]:.2f}x" for r in rates[1:]) + " |")
        if echo:
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn",
                        help="cnn: 2 same-size 5x5 convolutions + linear; samplenet: Opacus' MNIST example CNN")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products and convolutions (every mode)")
    args = parser.parse_args()
    text = throughput_table(torch.device(args.device), args.batch, steps=args.steps, warmup=args.warmup,
                            model=args.model, tf32=args.tf32)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
