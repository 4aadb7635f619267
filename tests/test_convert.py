"""nestzoo convert: the reference implementation's checkpoints become presets with equal outputs.

benchmarks/torch_reference.py's networks have the reference's tensor names; every
variant of resnet20 (32x32 CIFAR inputs, strided stages with projection shortcuts) gets
random weights and BN statistics, is saved with torch.save under the reference's
folder names (one as a training checkpoint with `net`), converted, and must give the
PyTorch logits within 1e-5 on standardized inputs, with CIFAR-10 and CIFAR-100 heads.
"""
import json
import sys

import numpy as np
import pytest
import torch

import nestzoo
from benchmarks import torch_reference
from nestzoo import cli, convert, published
from nestzoo.presets import sha256

# reference folder name -> (variant, classes, saved as a training checkpoint dict with "net")
CHECKPOINTS = {
    "CIFAR10_Standard_ResNet_20_seed=0": ("standard", 10, False),
    "CIFAR100_ResNEst_ResNet_20_seed=1": ("resnest", 100, False),
    "CIFAR10_BNResNEst_ResNet_20_seed=2": ("bn-resnest", 10, True),
    "CIFAR100_AResNEst_ResNet_20_seed=3": ("a-resnest", 100, False),
}


# presets also loaded by name into a fresh model (the others: their recorded logits only)
LOADED = ("CIFAR10_BNResNEst_ResNet_20_seed=2", "CIFAR100_AResNEst_ResNet_20_seed=3")


def reference_net(variant, classes, arch="resnet20", seed=0):
    """A reference network with random weights and random BN parameters and statistics, in eval mode."""
    torch.manual_seed(seed)
    return torch_reference.randomize_batch_norms(torch_reference.ReferenceResNet(arch, variant, classes).eval())


def torch_logits(net, batch_nhwc):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(batch_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The checkpoint/ folder of CHECKPOINTS, its nets, and the presets converted from it."""
    root = tmp_path_factory.mktemp("reference")
    nets = {}
    for number, (folder, (variant, classes, training_checkpoint)) in enumerate(CHECKPOINTS.items()):
        net = nets[folder] = reference_net(variant, classes, seed=number)
        (root / "checkpoint" / folder).mkdir(parents=True)
        state = net.state_dict()
        saved = {"net": state, "optimizer": {"state": {}}, "scheduler": {"last_epoch": 3}} if training_checkpoint \
            else state
        torch.save(saved, root / "checkpoint" / folder / convert.CHECKPOINT_FILE)
    presets = convert.from_reference(root / "checkpoint", home=root / "home", verbose=False)  # default location
    return root, nets, presets


def test_every_variant_converts_to_equal_outputs(converted, monkeypatch):
    root, nets, presets = converted
    monkeypatch.setenv("NESTZOO_HOME", str(root / "home"))
    assert len(presets) == len(CHECKPOINTS)
    batch = np.random.default_rng(1).standard_normal((3, 32, 32, 3), dtype=np.float32)  # standardized inputs
    for preset, (folder, (variant, classes, _)) in zip(presets, sorted(CHECKPOINTS.items())):
        names = convert.parse_folder_name(folder)
        assert preset == root / "home" / "presets" / f"resnet20.{variant}" / f"{names['dataset']}-seed{names['seed']}"
        metadata = json.loads((preset / "metadata.json").read_text())
        assert metadata["dataset"] == names["dataset"] and metadata["seed"] == names["seed"]
        assert metadata["recipe"] == "paper"
        source = root / "checkpoint" / folder / convert.CHECKPOINT_FILE
        assert metadata["source"] == {"kind": "reference", "path": str(source.resolve()),
                                      "sha256": sha256(source)}
        assert metadata["published_accuracy"] == published.published_accuracy(
            names["dataset"], "resnet20", variant)
        # the logits written at conversion are the PyTorch network's on that fixed batch
        fixed = metadata["fixed_batch"]
        logits = np.asarray(fixed["logits"])
        assert fixed["shape"] == [convert.FIXED_BATCH_SIZE, 32, 32, 3] and logits.shape == (2, classes)
        np.testing.assert_allclose(logits, torch_logits(nets[folder], convert.fixed_batch((32, 32, 3))),
                                   rtol=0, atol=1e-5)
        assert metadata["weights_sha256"] == sha256(preset / "model.weights.h5")
        if folder not in LOADED:
            continue
        # the preset, loaded by name into a fresh model, gives the PyTorch logits on another batch
        model = nestzoo.create_model(f"resnet20.{variant}", classes=classes, classifier_activation=None,
                                     weights=f"{names['dataset']}:seed{names['seed']}")
        np.testing.assert_allclose(np.asarray(model(batch, training=False)), torch_logits(nets[folder], batch),
                                   rtol=0, atol=1e-5)


def test_rerun_skips_finished_presets_and_cli_prints_one_line_per_model(converted, capsys, monkeypatch):
    root, _, presets = converted
    monkeypatch.setenv("NESTZOO_HOME", str(root / "home"))
    stamps = [(p / "model.weights.h5").stat().st_mtime_ns for p in presets]
    cli.main(["convert", str(root / "checkpoint")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.startswith(f"[{n}/{len(CHECKPOINTS)}]") for n, line in enumerate(lines[:-1], 1)] == \
        [True] * len(CHECKPOINTS)
    assert all("already converted, skipped" in line for line in lines[:-1])
    assert [(p / "model.weights.h5").stat().st_mtime_ns for p in presets] == stamps


def test_flags_name_a_file_outside_reference_folders(converted, tmp_path):
    root, nets, _ = converted
    folder = "CIFAR100_AResNEst_ResNet_20_seed=3"
    file = tmp_path / "downloads" / "model.pt"
    file.parent.mkdir()
    file.write_bytes((root / "checkpoint" / folder / convert.CHECKPOINT_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"'downloads' is not a reference checkpoint folder name.*--arch"):
        convert.from_reference(file, tmp_path / "out", verbose=False)
    with pytest.raises(ValueError, match=r"would both be resnet20\.standard on cifar10 seed 0"):
        convert.from_reference(root / "checkpoint", tmp_path / "out", arch="resnet20", variant="standard",
                               dataset="cifar10", seed=0, verbose=False)
    (preset,) = convert.from_reference(file, tmp_path / "out", arch="resnet20", variant="a-resnest",
                                       dataset="cifar100", seed=5, verbose=False)
    assert preset == tmp_path / "out" / "resnet20.a-resnest" / "cifar100-seed5"
    logits = np.asarray(json.loads((preset / "metadata.json").read_text())["fixed_batch"]["logits"])
    np.testing.assert_allclose(logits, torch_logits(nets[folder], convert.fixed_batch((32, 32, 3))), atol=1e-5)


def test_parse_folder_name():
    assert convert.parse_folder_name("CIFAR10_AResNEst_WRN_16_8_seed=3") == {
        "dataset": "cifar10", "variant": "a-resnest", "arch": "wrn16-8", "seed": 3}
    assert convert.parse_folder_name("CIFAR100_BNResNEst_ResNet_110_seed=0")["variant"] == "bn-resnest"
    with pytest.raises(ValueError, match=r"CIFAR10_ResNet20_seed=1.*is not a reference checkpoint folder name "
                                         r"<CIFAR10\|CIFAR100>_"):
        convert.parse_folder_name("CIFAR10_ResNet20_seed=1")


@pytest.fixture(scope="module")
def small():
    """A resnet20.standard nestzoo model on 16x16 inputs and a matching reference state dict."""
    model = nestzoo.create_model("resnet20.standard", input_shape=(16, 16, 3), classes=10)
    return model, reference_net("standard", 10).state_dict()


def test_missing_tensor_is_named(small):
    model, state = small
    state = dict(state)
    del state["stage.1.0.projection.0.weight"]
    with pytest.raises(ValueError, match=r"does not fit resnet20\.standard with 10 classes \(1 missing: "
                                         r"stage\.1\.0\.projection\.0\.weight\)"):
        convert.load_reference_state(model, state)


def test_unexpected_tensor_is_named(small):
    model, state = small
    state = {**state, "stage.2.2.conv3.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(ValueError, match=r"1 unexpected: stage\.2\.2\.conv3\.weight\)"):
        convert.load_reference_state(model, state)


def test_misshapen_tensor_is_named_and_nothing_loaded(small):
    model, state = small
    before = [np.asarray(w).copy() for w in model.weights]
    state = {**state, "stage.0.1.conv1.weight": torch.zeros(16, 16, 1, 1)}
    with pytest.raises(ValueError, match=r"1 misshapen: stage\.0\.1\.conv1\.weight \(16, 16, 1, 1\) "
                                         r"\(expected \(16, 16, 3, 3\)\)"):
        convert.load_reference_state(model, state)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, model.weights))  # no partial load


def test_other_arch_variant_and_classes_are_recognized(small):
    model, _ = small
    deep = torch_reference.ReferenceResNet("resnet110", "a-resnest", 100).state_dict()
    with pytest.raises(ValueError, match=r"does not fit resnet20\.standard with 10 classes .*unexpected.*"
                                         r"it looks like resnet110\.a-resnest, 100 classes"):
        convert.load_reference_state(model, deep)
    wide_head = reference_net("bn-resnest", 100).state_dict()
    with pytest.raises(ValueError, match=r"2 misshapen: linear\.weight \(100, 64\) \(expected \(10, 64\)\), "
                                         r"linear\.bias.*looks like resnet20\.standard or bn-resnest, 100 classes"):
        convert.load_reference_state(model, wide_head)


def test_torch_missing_says_what_to_install(converted, monkeypatch, capsys):
    root, _, _ = converted
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    file = root / "checkpoint" / "CIFAR10_Standard_ResNet_20_seed=0" / convert.CHECKPOINT_FILE
    with pytest.raises(ImportError, match=r"pip install nestzoo\[torch\]"):
        convert.read_checkpoint(file)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", str(file), "--output", str(root / "other")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nestzoo convert: error: " in err and "pip install nestzoo[torch]" in err
    assert not (root / "other").exists()


def test_not_a_state_dict_is_refused(tmp_path):
    folder = tmp_path / "CIFAR10_Standard_ResNet_20_seed=0"
    folder.mkdir()
    torch.save([torch.zeros(2)], folder / convert.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="holds no state dict"):
        convert.from_reference(folder, tmp_path / "out", verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no last_model.pt"):
        convert.from_reference(tmp_path / "empty", verbose=False)
