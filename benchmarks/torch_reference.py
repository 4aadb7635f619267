"""The paper's pre-activation ResNet written in PyTorch, timed for comparison.

The same network as ``nestzoo.ResNet(arch)`` (the reference implementation's
blocks), trained with the same step: SGD with Nesterov momentum 0.9, coupled weight
decay 5e-4, cross-entropy. Used by train_throughput.py (CPU) and gpu_throughput.py.
"""
import time

import torch
from torch import nn
from torch.nn import functional as F

from nestzoo import specs

AUTOCAST = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}


class Block(nn.Module):
    """The pre-activation basic block of nestzoo (and of the paper's reference)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(y)
        return self.conv2(F.relu(self.bn2(self.conv1(y)))) + shortcut


def reference_resnet(arch, classes=10):
    """The standard pre-activation ResNet of a registered (basic-block) arch."""
    spec = specs.get_spec(arch, "resnet")
    layers, width_in = [nn.Conv2d(3, spec.widths[0], 3, 1, 1, bias=False)], spec.widths[0]
    for _, _, width, _, stride in spec.stage_blocks():
        layers.append(Block(width_in, width, stride))
        width_in = width
    return nn.Sequential(*layers, nn.BatchNorm2d(width_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width_in, classes))


def images_per_second(arch, batch_size, steps, warmup, device="cpu", precision="float32"):
    """(label, steady-state training images/s) of the PyTorch network on `device`.

    On CUDA the network runs channels-last, mixed precisions under autocast (float16
    with a gradient scaler), as a tuned PyTorch training loop would.
    """
    net = reference_resnet(arch).to(device)
    x, y = torch.rand(batch_size, 3, 32, 32, device=device), torch.randint(0, 10, (batch_size,), device=device)
    if device != "cpu":
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(enabled=precision == "mixed_float16")
    stamps = []
    for _ in range(warmup + steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, AUTOCAST.get(precision), enabled=precision in AUTOCAST):
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # waits for the step to finish
        stamps.append(time.perf_counter())
    steady = stamps[warmup - 1:]
    label = f"PyTorch {torch.__version__} ({device}, {precision}, {torch.get_num_threads()} threads)"
    return label, batch_size * steps / (steady[-1] - steady[0])
