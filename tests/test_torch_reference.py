"""nestzoo's ResNets equal the paper's reference implementation, written in PyTorch.

The four variants of benchmarks/torch_reference.py get random weights and random
batch-normalization parameters and statistics; these are copied, module by module,
into the nestzoo model, and both must give the same logits in inference mode.
"""
import numpy as np
import pytest
import torch

import nestzoo
from benchmarks import torch_reference

# (height = width, channels, classes): stride-2 stages with projection shortcuts on
# even sizes (16 -> 8 -> 4, where Keras's "same" padding is one-sided) and odd ones
CASES = [(16, 3, 10), (15, 1, 7)]


def randomize_batch_norms(net):
    """Random gamma, beta, running mean and variance in every BN (PyTorch's are 1, 0, 0, 1)."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 1.5)


def keras_weights(net):
    """{nestzoo layer name: its weights in Keras layout} for every module of the PyTorch net."""

    def conv(m):  # OIHW -> HWIO
        return [m.weight.detach().numpy().transpose(2, 3, 1, 0)]

    def bn(m):
        return [t.detach().numpy() for t in (m.weight, m.bias, m.running_mean, m.running_var)]

    def linear(m):  # (out, in) -> (in, out)
        return [m.weight.detach().numpy().T, m.bias.detach().numpy()]

    weights = {"expansion": conv(net.stem)}
    for i, block in enumerate(net.blocks, 1):
        weights[f"block{i}_preact_bn"] = bn(block.bn1)
        weights[f"block{i}_conv1"] = conv(block.conv1)
        weights[f"block{i}_bn1"] = bn(block.bn2)
        if block.conv2 is not None:
            weights[f"block{i}_W"] = conv(block.conv2)
        if block.shortcut is not None:
            weights[f"block{i}_shortcut"] = conv(block.shortcut)
    if net.final_bn is not None:
        weights["final_bn"] = bn(net.final_bn)
    if net.variant == "a-resnest":
        weights.update({f"head{i}": linear(head) for i, head in enumerate(net.heads)})
    else:
        weights["logits"] = linear(net.linear)
    return weights


def size(arrays):
    return sum(int(np.prod(a.shape)) for a in arrays)


@pytest.mark.parametrize("size_,channels,classes", CASES)
@pytest.mark.parametrize("variant", torch_reference.VARIANTS)
def test_outputs_equal_pytorch_reference(variant, size_, channels, classes):
    torch.manual_seed(0)
    net = torch_reference.ReferenceResNet("resnet20", variant, classes, in_channels=channels).eval()
    randomize_batch_norms(net)
    model = nestzoo.create_model(f"resnet20.{variant}", input_shape=(size_, size_, channels), classes=classes,
                                 classifier_activation=None)
    assert size(model.trainable_weights) == size(net.parameters())

    weights = keras_weights(net)
    state = [t for name, t in net.state_dict().items() if not name.endswith("num_batches_tracked")]
    assert size(sum(weights.values(), [])) == size(state)  # every PyTorch tensor is copied
    assert sorted(weights) == sorted(layer.name for layer in model.layers if layer.weights)
    for name, arrays in weights.items():
        model.get_layer(name).set_weights(arrays)

    x = np.random.default_rng(0).normal(size=(4, channels, size_, size_)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    actual = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
