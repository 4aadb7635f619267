"""The reference implementation's trained checkpoints as nestzoo presets (``nestzoo convert``).

The paper's authors published the trained models of Tables 1-2 as ``last_model.pt``
files of their PyTorch implementation (docs/reference.md, "Reference checkpoints"):
``checkpoint/<data set>_<variant>_<arch>_seed=<s>/last_model.pt``, each a
``state_dict`` (or a training checkpoint dict holding it under ``net``).

`from_reference` reads them with ``torch.load(..., weights_only=True)`` (never a full
unpickle), maps every tensor onto one variable of the nestzoo model of that arch and
variant (`load_reference_state`, strict: a missing, unexpected or misshapen tensor is
an error naming it), and writes the model as a preset through
`nestzoo.presets.save_preset`, with its provenance and the converted model's logits
on a fixed batch. `reference_mapping` is the one table from reference tensor names
to nestzoo layers; tests/test_torch_reference.py uses it too.

Layouts: a PyTorch convolution weight (out, in, kh, kw) becomes Keras's
(kh, kw, in, out), a linear weight (out, in) becomes (in, out); batch normalization's
weight, bias, running_mean, running_var are gamma, beta, moving_mean, moving_var
(``num_batches_tracked`` is ignored). The A-ResNEst's ``H_0`` is its head on the
pooled input v_0 and ``H_k.{j}.{i}`` the head on the pooled v of block i of stage j
(eq. (4)).

PyTorch is an optional extra: ``pip install nestzoo[torch]``.
"""
import re
import time
from pathlib import Path

import numpy as np

from nestzoo import published, registry

CHECKPOINT_FILE = "last_model.pt"
DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100"}
CLASSES = {"cifar10": 10, "cifar100": 100}
VARIANTS = {"Standard": "standard", "ResNEst": "resnest", "BNResNEst": "bn-resnest", "AResNEst": "a-resnest"}
ARCHS = {"ResNet_20": "resnet20", "ResNet_110": "resnet110", "WRN_16_8": "wrn16-8", "WRN_40_4": "wrn40-4"}
FOLDER_PATTERN = ("<CIFAR10|CIFAR100>_<Standard|ResNEst|BNResNEst|AResNEst>_"
                  "<ResNet_20|ResNet_110|WRN_16_8|WRN_40_4>_seed=<s>")
_FOLDER = re.compile(r"(?P<dataset>CIFAR100|CIFAR10)_(?P<variant>BNResNEst|AResNEst|ResNEst|Standard)_"
                     r"(?P<arch>ResNet_20|ResNet_110|WRN_16_8|WRN_40_4)_seed=(?P<seed>\d+)")
# The fixed batch whose logits a converted preset records: standard normal (standardized) images.
FIXED_BATCH_SEED = 0
FIXED_BATCH_SIZE = 2

_BN = (("weight", 0), ("bias", 1), ("running_mean", 2), ("running_var", 3))


def _conv(array):  # (out, in, kh, kw) -> (kh, kw, in, out)
    return array.transpose(2, 3, 1, 0)


def _linear(array):  # (out, in) -> (in, out)
    return array.T


def _same(array):
    return array


def _torch_shape(transform, shape):
    """The PyTorch layout of a Keras variable's `shape`: the inverse of `transform`."""
    if transform is _conv:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if transform is _linear else tuple(shape)


def parse_folder_name(name):
    """{"dataset", "variant", "arch", "seed"} (nestzoo names) of a reference folder name.

    ``"CIFAR10_AResNEst_WRN_16_8_seed=3"`` -> {"dataset": "cifar10", "variant":
    "a-resnest", "arch": "wrn16-8", "seed": 3}. Raises ValueError naming the expected
    form when `name` is not one.
    """
    match = _FOLDER.fullmatch(str(name))
    if not match:
        raise ValueError(f"{name!r} is not a reference checkpoint folder name {FOLDER_PATTERN} "
                         f"(e.g. CIFAR10_AResNEst_WRN_16_8_seed=3); name the model with --arch, --variant, "
                         f"--dataset and --seed (arch= ... in Python)")
    return {"dataset": DATASETS[match["dataset"]], "variant": VARIANTS[match["variant"]],
            "arch": ARCHS[match["arch"]], "seed": int(match["seed"])}


def reference_mapping(model):
    """{reference tensor name: (nestzoo layer name, weight index, layout transform)} of `model`.

    `model` is a nestzoo ResNet-family model (any arch, variant, input size or class
    count); the table names exactly the tensors (``num_batches_tracked`` aside) that a
    reference ``state_dict`` of the same network holds. Blocks are numbered
    ``block1..blockL`` in nestzoo and ``stage.{j}.{i}`` in the reference.
    """
    spec = model.identity.spec
    if spec.family != "resnet":
        raise ValueError(f"the reference checkpoints hold ResNets; {model.identity.name} is a {spec.family}")
    layers = {layer.name for layer in model.layers if layer.weights}
    mapping = {"expansion.weight": ("expansion", 0, _conv)}

    def bn(prefix, layer):
        mapping.update({f"{prefix}.{key}": (layer, index, _same) for key, index in _BN})

    def linear(prefix, layer):
        mapping.update({f"{prefix}.weight": (layer, 0, _linear), f"{prefix}.bias": (layer, 1, _same)})

    number = 0
    for j, depth in enumerate(spec.blocks):
        for i in range(depth):
            number += 1
            prefix, block = f"stage.{j}.{i}", f"block{number}"
            bn(f"{prefix}.bn1", f"{block}_preact_bn")
            mapping[f"{prefix}.conv1.weight"] = (f"{block}_conv1", 0, _conv)
            bn(f"{prefix}.bn2", f"{block}_bn1")
            if f"{block}_W" in layers:
                mapping[f"{prefix}.conv2.weight"] = (f"{block}_W", 0, _conv)
            if f"{block}_shortcut" in layers:
                mapping[f"{prefix}.projection.0.weight"] = (f"{block}_shortcut", 0, _conv)
            if f"head{number}" in layers:
                linear(f"H_k.{j}.{i}", f"head{number}")
    if "final_bn" in layers:
        bn("final_bn", "final_bn")
    if "head0" in layers:
        linear("H_0", "head0")
    if "logits" in layers:
        linear("linear", "logits")
    return mapping


def describe_state(state):
    """What a reference state dict looks like: "resnet110.a-resnest, 100 classes" (best effort).

    Read from its tensor names and shapes: blocks per stage and stage widths give the
    arch (a registry arch, else the numbers), ``H_0`` the A-ResNEst, ``final_bn`` the
    Standard or BN-ResNEst (they differ by a ReLU, not by a tensor), ``linear`` alone
    the ResNEst.
    """
    depths, widths = {}, {}
    for name, array in state.items():
        match = re.fullmatch(r"stage\.(\d+)\.(\d+)\.conv1\.weight", name)
        if match:
            j, i = int(match[1]), int(match[2])
            depths[j] = max(depths.get(j, 0), i + 1)
            widths.setdefault(j, int(np.shape(array)[0]))
    blocks = tuple(depths[j] for j in sorted(depths))
    width = tuple(widths[j] for j in sorted(widths))
    arch = next((name for name, spec in registry.ARCHS.items() if spec.family == "resnet"
                 and tuple(spec.blocks) == blocks and tuple(spec.width) == width),
                f"a ResNet with blocks {blocks} and widths {width}" if blocks else "no ResNet (no stage.*.conv1)")
    if "H_0.weight" in state:
        variant, classes = "a-resnest", np.shape(state["H_0.weight"])[0]
    elif "final_bn.weight" in state:
        variant = "standard or bn-resnest"
        classes = np.shape(state["linear.weight"])[0] if "linear.weight" in state else None
    elif "linear.weight" in state:
        variant, classes = "resnest", np.shape(state["linear.weight"])[0]
    else:
        variant, classes = "no known head", None
    return f"{arch}.{variant}" + (f", {int(classes)} classes" if classes is not None else "")


def _model_label(model):
    classes = model.options.get("classes")
    return f"{model.identity.name} with {classes} classes"


def load_reference_state(model, state, source="the state dict"):
    """Copy a reference ``state_dict`` (name -> array) into `model`, strictly, and return `model`.

    Every tensor (``num_batches_tracked`` aside) must map to one variable of `model`
    (`reference_mapping`) with the same number of entries in the transposed layout,
    and every variable must be given. Otherwise raises ValueError naming the missing,
    unexpected or misshapen tensors, the model expected and what the checkpoint looks
    like (`describe_state`); nothing is loaded then.
    """
    state = {name: np.asarray(value) for name, value in state.items() if not name.endswith("num_batches_tracked")}
    mapping = reference_mapping(model)
    missing = [name for name in mapping if name not in state]
    unexpected = [name for name in state if name not in mapping]
    layers = {name: model.get_layer(name) for name in {layer for layer, _, _ in mapping.values()}}
    values = {name: [np.asarray(w) for w in layer.get_weights()] for name, layer in layers.items()}
    misshapen = []
    for name, (layer, index, transform) in mapping.items():
        if name not in state:
            continue
        expected = values[layer][index].shape
        array = state[name]
        if array.ndim != len(expected) or transform(array).shape != expected:
            misshapen.append(f"{name} {tuple(array.shape)} (expected {_torch_shape(transform, expected)})")
            continue
        values[layer][index] = transform(array).astype(values[layer][index].dtype)
    if missing or unexpected or misshapen:
        problems = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
            if names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                problems.append(f"{len(names)} {label}: {shown}")
        raise ValueError(f"{source} does not fit {_model_label(model)} ({'; '.join(problems)}); "
                         f"it looks like {describe_state(state)}")
    for name, layer in layers.items():
        layer.set_weights(values[name])
    return model


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading the reference's PyTorch checkpoints needs PyTorch: "
                          "pip install nestzoo[torch]") from error
    return torch


def read_checkpoint(path):
    """The state dict (name -> numpy array) of a reference ``.pt`` file.

    Loaded with ``torch.load(path, map_location="cpu", weights_only=True)``; a training
    checkpoint (a dict with ``net``) gives its ``net``.
    """
    torch = _torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # UnpicklingError (not weights only), RuntimeError (not a torch file)
        raise ValueError(f"{path} is not a PyTorch state dict readable with weights_only=True: {error}") from error
    if isinstance(loaded, dict) and "net" in loaded and isinstance(loaded["net"], dict):
        loaded = loaded["net"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict (name -> tensor) nor a training checkpoint with 'net'")
    return {str(name): tensor.detach().cpu().float().numpy() if tensor.is_floating_point()
            else tensor.detach().cpu().numpy() for name, tensor in loaded.items()}


def find_checkpoints(path):
    """The ``last_model.pt`` files that PATH names: itself, a ``<model>_seed=<s>`` folder's, or
    those of every such folder in a ``checkpoint/`` folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; give a {CHECKPOINT_FILE}, a {FOLDER_PATTERN} folder "
                                f"or the checkpoint/ folder holding them")
    if (path / CHECKPOINT_FILE).is_file():
        return [path / CHECKPOINT_FILE]
    found = sorted(path.glob(f"*/{CHECKPOINT_FILE}"))
    if not found:
        raise FileNotFoundError(f"{path} holds no {CHECKPOINT_FILE} (nor */{CHECKPOINT_FILE}): give a "
                                f"{CHECKPOINT_FILE}, a {FOLDER_PATTERN} folder or the checkpoint/ folder")
    return found


def describe_checkpoint(path, arch=None, variant=None, dataset=None, seed=None):
    """(model name "arch.variant", dataset, seed) of one checkpoint file, from its folder's name
    (`parse_folder_name`), each overridden by the given value; raises ValueError when the
    name does not parse and the values are not all given (seed defaults to 0 then)."""
    given = {"arch": arch, "variant": variant, "dataset": dataset, "seed": seed}
    try:
        names = parse_folder_name(Path(path).parent.name)
    except ValueError as error:
        if arch is None or variant is None or dataset is None:
            raise ValueError(f"{path}: {error}") from None
        names = {"seed": 0}
    names.update({key: value for key, value in given.items() if value is not None})
    family, arch_name, variant_name = registry.parse_name(f"{names['arch']}.{names['variant']}")
    if family != "resnet" or arch_name not in ARCHS.values():
        raise ValueError(f"the reference checkpoints hold {', '.join(ARCHS.values())}; got {arch_name!r}")
    data = str(names["dataset"]).lower().replace("-", "")
    if data not in CLASSES:
        raise ValueError(f"the reference checkpoints are of {' or '.join(CLASSES)}; got dataset {names['dataset']!r}")
    return f"{arch_name}.{variant_name}", data, int(names["seed"])


def fixed_batch(input_shape, seed=FIXED_BATCH_SEED, size=FIXED_BATCH_SIZE):
    """The fixed batch a converted preset's logits are recorded on: standard normal
    (i.e. standardized) float32 images of `input_shape`, from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).standard_normal((size, *input_shape), dtype=np.float32)


def convert_state(state, model_name, dataset, source=None):
    """A nestzoo model (32x32x3 CIFAR inputs, logits out) holding a reference state dict
    (`load_reference_state`; `source` names it in errors)."""
    from nestzoo.builders import create_model

    model = create_model(model_name, classes=CLASSES[dataset], classifier_activation=None)
    return load_reference_state(model, state, source=source or f"the checkpoint of {model_name} on {dataset}")


def _preset_target(output, model_name, dataset, seed, home):
    if output is not None:
        return Path(output) / model_name / f"{dataset}-seed{seed}"
    from nestzoo.presets import preset_dir

    return Path(preset_dir(model_name, dataset, seed=seed, home=home))


def _existing_source(target):
    import json

    try:
        metadata = json.loads((target / "metadata.json").read_text())
        if (target / "config.json").is_file() and (target / "model.weights.h5").is_file():
            return metadata.get("source", {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        pass
    return None


def from_reference(path, output=None, *, arch=None, variant=None, dataset=None, seed=None, home=None,
                   verbose=True):
    """Convert reference checkpoints into nestzoo presets; returns the preset directories.

    path: one ``last_model.pt`` (or any reference ``.pt`` state dict or training
        checkpoint), a ``<model>_seed=<s>`` folder holding one, or the ``checkpoint/``
        folder holding many (the published 224).
    output: the folder receiving the presets, as ``<output>/<arch.variant>/<dataset>-seed<s>``;
        default `nestzoo.presets.preset_dir` (under ``$NESTZOO_HOME``, or `home`).
    arch, variant, dataset, seed: override what the folder names say (needed for a file
        whose folder is not named like the reference's; the seed then defaults to 0).
    verbose: print one line per model (it is a long job for 224 models).

    A preset already written from the same checkpoint (same sha256) is skipped, so an
    interrupted conversion resumes where it stopped; one from another checkpoint is an
    error (nothing is overwritten). The metadata records the source (path, sha256),
    the published accuracy (`nestzoo.published`), recipe "paper", the seed and the
    converted model's logits on `fixed_batch` (seed, shape, logits).
    """
    checkpoints = find_checkpoints(path)
    jobs = [(file, *describe_checkpoint(file, arch, variant, dataset, seed)) for file in checkpoints]
    seen = {}
    for file, *names in jobs:
        if tuple(names) in seen:
            raise ValueError(f"{seen[tuple(names)]} and {file} would both be {names[0]} on {names[1]} seed {names[2]}; "
                             f"convert them one at a time (--arch, --variant, --dataset and --seed apply to every "
                             f"checkpoint of PATH)")
        seen[tuple(names)] = file
    from nestzoo.presets import save_preset, sha256

    written = []
    for number, (file, model_name, data, model_seed) in enumerate(jobs, 1):
        start = time.perf_counter()
        target = _preset_target(output, model_name, data, model_seed, home)
        digest = sha256(file)
        label = f"[{number}/{len(jobs)}] {model_name} {data} seed {model_seed}"
        existing = _existing_source(target)
        if existing == digest:
            written.append(target)
            if verbose:
                print(f"{label}: {target} already converted, skipped", flush=True)
            continue
        if target.exists():
            raise ValueError(f"{target} already holds {'a preset of another source' if existing else 'files'}; "
                             f"remove it to convert {file} there")
        model = convert_state(read_checkpoint(file), model_name, data, source=f"{file} (named {model_name} on {data})")
        _, arch_name, variant_name = registry.parse_name(model_name)
        batch = fixed_batch(tuple(model.input_shape[1:]))
        logits = np.asarray(model(batch, training=False), dtype=np.float64)
        metadata = {
            "dataset": data,
            "seed": model_seed,
            "source": {"kind": "reference", "path": str(Path(file).resolve()), "sha256": digest},
            "published_accuracy": published.published_accuracy(data, arch_name, variant_name),
            "recipe": "paper",
            "fixed_batch": {"seed": FIXED_BATCH_SEED, "shape": list(batch.shape), "logits": logits.tolist()},
        }
        target = Path(save_preset(model, target, metadata))
        written.append(target)
        if verbose:
            print(f"{label}: {target} ({time.perf_counter() - start:.1f} s)", flush=True)
    return written
