"""The paper's CIFAR networks written in PyTorch: the reference for tests and timings.

Built from the description of the paper's reference implementation (docs/reference.md,
"Architectures and parameter counts"), not from nestzoo's code:
one pre-activation backbone and the four heads (Standard, ResNEst, BN-ResNEst,
A-ResNEst), with the reference's module names, so that ``state_dict()`` is a
``last_model.pt`` of the reference. tests/test_torch_reference.py and
tests/test_convert.py convert these networks' weights into nestzoo's models
(`nestzoo.convert`) and require equal outputs; train_throughput.py (CPU) and
gpu_throughput.py time the standard one trained with the paper's step: SGD with
Nesterov momentum 0.9, coupled weight decay 5e-4, cross-entropy.
"""
import time

import torch
from torch import nn
from torch.nn import functional as F

AUTOCAST = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}

# arch -> (blocks per stage, width M per stage)
ARCHS = {
    "resnet20": ((3, 3, 3), (16, 32, 64)),
    "resnet110": ((18, 18, 18), (16, 32, 64)),
    "wrn16-8": ((2, 2, 2), (128, 256, 512)),
    "wrn40-4": ((6, 6, 6), (64, 128, 256)),
}
VARIANTS = ("standard", "resnest", "bn-resnest", "a-resnest")


class Block(nn.Module):
    """Pre-activation basic block; returns (x_i, v_i), x_i None without W_i (``residual=False``).

    Modules carry the reference implementation's names: bn1 (on x_{i-1}), conv1 and bn2
    (G_i), conv2 (W_i) and projection.0 (the 1x1 projection shortcut).
    """

    def __init__(self, cin, cout, stride, residual=True):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False) if residual else None
        project = residual and (stride != 1 or cin != cout)
        self.projection = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False)) if project else None

    def forward(self, x):
        y = F.relu(self.bn1(x))
        v = F.relu(self.bn2(self.conv1(y)))
        if self.conv2 is None:
            return None, v
        return self.conv2(v) + (x if self.projection is None else self.projection(y)), v


class ReferenceResNet(nn.Module):
    """`variant` of the CIFAR pre-activation ResNet `arch` on `in_channels`-channel images.

    Its ``state_dict()`` has exactly the tensor names of the reference implementation's
    ``last_model.pt`` (docs/reference.md, "Reference checkpoints"): ``expansion``,
    ``stage.{j}.{i}.*``, ``final_bn``, ``linear``, and the A-ResNEst's ``H_0`` and
    ``H_k.{j}.{i}``.
    """

    def __init__(self, arch, variant="standard", classes=10, in_channels=3):
        super().__init__()
        if arch not in ARCHS or variant not in VARIANTS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)} and variant one of {', '.join(VARIANTS)}; "
                             f"got {arch!r}, {variant!r}")
        self.variant = variant
        depths, widths = ARCHS[arch]
        self.expansion = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)  # W_0
        augmented = variant == "a-resnest"  # the last block loses W_L
        stages, cin = [], widths[0]
        for j, (depth, cout) in enumerate(zip(depths, widths)):
            blocks = []
            for i in range(depth):
                last = j == len(depths) - 1 and i == depth - 1
                blocks.append(Block(cin, cout, 2 if j and i == 0 else 1, residual=not (augmented and last)))
                cin = cout
            stages.append(nn.ModuleList(blocks))
        self.stage = nn.ModuleList(stages)
        self.final_bn = nn.BatchNorm2d(widths[-1]) if variant in ("standard", "bn-resnest") else None
        if augmented:  # H_0 on the pooled input, H_k on the pooled v_1..v_L, eq. (4)
            self.H_0 = nn.Linear(in_channels, classes)
            self.H_k = nn.ModuleList(nn.ModuleList(nn.Linear(width, classes) for _ in range(depth))
                                     for depth, width in zip(depths, widths))
        else:
            self.linear = nn.Linear(widths[-1], classes)  # W_{L+1}

    @property
    def blocks(self):
        """The blocks in order (stage by stage)."""
        return [block for stage in self.stage for block in stage]

    def forward(self, x):
        augmented = self.variant == "a-resnest"
        logits = self.H_0(x.mean((2, 3))) if augmented else None  # v_0 = x
        x = self.expansion(x)
        for j, stage in enumerate(self.stage):
            for i, block in enumerate(stage):
                x, v = block(x)
                if augmented:
                    logits = logits + self.H_k[j][i](v.mean((2, 3)))
        if augmented:
            return logits
        if self.final_bn is not None:
            x = self.final_bn(x)
        if self.variant == "standard":
            x = F.relu(x)
        return self.linear(x.mean((2, 3)))


def randomize_batch_norms(net):
    """Random gamma, beta, running mean and variance in every BN of `net` (PyTorch's are 1, 0, 0, 1),
    so that a weight copy that mixes them up shows; returns `net`."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    return net


def reference_resnet(arch, classes=10):
    """The standard pre-activation ResNet of `arch`."""
    return ReferenceResNet(arch, "standard", classes)


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
