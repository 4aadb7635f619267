"""nestzoo's ResNets equal the paper's reference implementation, written in PyTorch.

The four variants of benchmarks/torch_reference.py get random weights and random
batch-normalization parameters and statistics; these are copied, module by module,
into the nestzoo model by nestzoo.convert's mapping of the reference implementation's
tensor names (the names of torch_reference's state_dict()), and both must give the same
logits in inference mode.
"""
import numpy as np
import pytest
import torch

import nestzoo
from nestzoo import convert
from benchmarks import torch_reference

# (height = width, channels, classes): stride-2 stages with projection shortcuts on
# even sizes (16 -> 8 -> 4, where Keras's "same" padding is one-sided) and odd ones
CASES = [(16, 3, 10), (15, 1, 7)]


def size(arrays):
    return sum(int(np.prod(a.shape)) for a in arrays)


@pytest.mark.parametrize("size_,channels,classes", CASES)
@pytest.mark.parametrize("variant", torch_reference.VARIANTS)
def test_outputs_equal_pytorch_reference(variant, size_, channels, classes):
    torch.manual_seed(0)
    net = torch_reference.ReferenceResNet("resnet20", variant, classes, in_channels=channels).eval()
    torch_reference.randomize_batch_norms(net)
    model = nestzoo.create_model(f"resnet20.{variant}", input_shape=(size_, size_, channels), classes=classes,
                                 classifier_activation=None)
    assert size(model.trainable_weights) == size(net.parameters())

    state = net.state_dict()
    assert sorted(convert.reference_mapping(model)) == sorted(
        name for name in state if not name.endswith("num_batches_tracked"))  # every tensor maps to a variable
    assert {layer for layer, _, _ in convert.reference_mapping(model).values()} == {
        layer.name for layer in model.layers if layer.weights}  # and every layer with weights is given
    convert.load_reference_state(model, state)

    x = np.random.default_rng(0).normal(size=(4, channels, size_, size_)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    actual = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
