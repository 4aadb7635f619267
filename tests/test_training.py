"""The trainer: recipe, coupled decay, schedule, precision, run directory, divergence, tables."""
import csv
import json
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestzoo
from nestzoo import training
from nestzoo.training import run, runtime

TINY = dict(blocks=1, width=(8, 16, 32), input_shape=(8, 8, 1), classes=10)


def tiny_data(n=64, batch=16, seed=0):
    """(train, test) batched tf.data of 8x8x1 images whose class is readable from the pixels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32") * 0.1
    x[np.arange(n), y % 8, y // 8 * 4, 0] += 3.0
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    return ds, ds


def tiny_resnet(**options):
    return nestzoo.ResNet(**TINY, **options)


def tiny_a_resnest():
    return nestzoo.AResNEst(**TINY)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A two-epoch run of a tiny ResNet; returns (run directory, summary)."""
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    summary = training.train(nestzoo.ResNet(**TINY), tiny_data(), output_dir=run_dir, epochs=2, verbose=0)
    return run_dir, summary


@pytest.mark.parametrize("build, resnest", [(nestzoo.ResNEst, True), (nestzoo.BNResNEst, False),
                                             (nestzoo.AResNEst, False), (nestzoo.ResNet, False),
                                             (nestzoo.DenseNEst, False)])
def test_resnest_learning_rate_is_chosen_by_structure_not_name(tmp_path, build, resnest):
    """A ResNEst named "net" still trains at 0.01 (appendix B.3), also after a .keras round trip."""
    model = build(blocks=1, input_shape=(8, 8, 3), name="net",
                  **({"width": (4, 8, 8)} if build not in (nestzoo.DenseNet, nestzoo.DenseNEst) else {"features": 2}))
    rate = {True: 0.01, False: 0.1}[resnest]
    recipe = training.get_recipe("paper")
    assert recipe.initial_learning_rate(run.model_identity(model).resnest) == rate
    model.save(tmp_path / "net.keras")
    assert recipe.initial_learning_rate(run.model_identity(keras.saving.load_model(tmp_path / "net.keras")).resnest) \
        == rate


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(recipe="fast"), "unknown recipe 'fast'; valid choices: paper, quick"),
        (dict(precision="float16"), "unknown precision 'float16'; valid choices: auto, float32"),
        (dict(epochs=0), "epochs must be a positive integer, got 0"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(milestones=(60, 60, 160)), "milestones must be strictly increasing"),
        (dict(milestones=(120, 60)), "milestones must be strictly increasing"),
        (dict(learning_rate=-0.1), "learning_rate must be > 0"),
        (dict(weight_decay=float("inf")), "weight_decay must be a finite number, got inf"),
        (dict(typo=1), "unknown recipe fields ['typo']"),
    ],
)
def test_bad_training_options_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as error:
        training.train("resnet20.standard", "digits", output_dir=tmp_path, **kwargs)
    assert message in str(error.value)


def test_empty_seed_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="seeds is empty"):
        training.train_seeds("resnet20.standard", "digits", seeds=[], output_dir=tmp_path)


def test_precision_policies():
    gpu = runtime.has_gpu()
    assert training.resolve_precision("auto") == ("mixed_float16" if gpu else "float32")
    assert training.resolve_jit_compile(None) is gpu and training.resolve_jit_compile(False) is False
    assert training.PRECISIONS == ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@pytest.mark.parametrize("bfloat16_instructions", [True, False])
def test_16_bit_policies_on_a_cpu_warn_once_with_the_measured_factor(monkeypatch, bfloat16_instructions):
    monkeypatch.setattr(runtime, "has_gpu", lambda: False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f"} | ({"avx512_bf16"} if bfloat16_instructions else set()))
    runtime.warn_if_slow.cache_clear()
    with pytest.warns(UserWarning, match=r"^mixed_float16 on a CPU without a GPU: a training step took 5.6 to 13.9x "
                                         r"float32's on an AMD EPYC \(2 cores"):
        runtime.warn_if_slow("mixed_float16")
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        runtime.warn_if_slow("mixed_float16")  # once
        runtime.warn_if_slow("float32")
        runtime.warn_if_slow("mixed_bfloat16")
    assert [str(w.message).split(" on a CPU")[0] for w in later] == ([] if bfloat16_instructions else
                                                                      ["mixed_bfloat16"])
    runtime.warn_if_slow.cache_clear()


@pytest.mark.filterwarnings("ignore:mixed_float16 on a CPU")
def test_mixed_float16_run_has_loss_scaling_and_float32_outputs(tmp_path):
    train, test = tiny_data(n=32)
    summary = training.train(tiny_resnet, (train, test), output_dir=tmp_path, precision="mixed_float16",
                             model_options={"classifier_activation": None}, epochs=1, verbose=0)
    assert summary["config"]["precision"] == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.get_layer("block1_conv1").compute_dtype == "float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, training.CoupledSGD)
    assert model.get_layer("predictions").activation is keras.activations.linear  # trained on logits
    assert model.predict(next(iter(test))[0], verbose=0).dtype == np.float32


def test_model_built_under_another_policy_is_refused(tmp_path, policy):
    policy("mixed_bfloat16")
    model = nestzoo.ResNet(**TINY)
    with pytest.raises(ValueError, match="built under the mixed_bfloat16 policy, not mixed_float16"):
        training.train(model, tiny_data(), output_dir=tmp_path, precision="mixed_float16")


def test_run_directory_contents(finished_run):
    run_dir, summary = finished_run
    expected = {"config.json", "log.csv", "tensorboard", "best.weights.h5", "model.keras", "summary.json", "curves.png"}
    assert {p.name for p in run_dir.iterdir()} == expected  # the checkpoint is gone once finished
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second"} <= set(rows[0])
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["config"]["recipe"]["weight_decay"] == 5e-4 and summary["config"]["initial_learning_rate"] == 0.1
    assert summary["parameters"] == sum(np.prod(w.shape) for w in nestzoo.ResNet(**TINY).trainable_weights)
    assert summary["best_val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert summary["images_per_second"] > 0 and summary["seconds_per_epoch"] > 0
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    model = keras.models.load_model(run_dir / "model.keras")
    assert isinstance(model.optimizer, training.CoupledSGD) and int(model.optimizer.iterations) == 2 * 4
    assert model.evaluate(tiny_data()[1], verbose=0)[1] == pytest.approx(summary["test_accuracy"])
    best = nestzoo.ResNet(**TINY)
    best.load_weights(run_dir / "best.weights.h5")
    best.compile(loss=run.loss_for(best), metrics=["accuracy"])
    assert best.evaluate(tiny_data()[1], verbose=0)[1] == pytest.approx(summary["best_val_accuracy"])


def test_a_saved_run_reloads_in_a_fresh_process_with_nestzoo_load_model(finished_run):
    """`import nestzoo` registers nothing (it is lazy); nestzoo.load_model finds nestzoo's optimizer."""
    run_dir, _ = finished_run
    script = ("import sys, nestzoo; model = nestzoo.load_model(sys.argv[1]); "
              "print(type(model.optimizer).__name__, int(model.optimizer.iterations))")
    result = subprocess.run([sys.executable, "-c", script, str(run_dir / "model.keras")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["CoupledSGD", str(2 * 4)]


def test_directory_of_another_run_is_refused_unless_resuming(finished_run, tmp_path):
    run_dir, summary = finished_run
    with pytest.raises(ValueError, match="holds another run's files; pass resume=True"):
        training.train(nestzoo.ResNet(**TINY), tiny_data(), output_dir=run_dir, epochs=2)
    assert training.train(nestzoo.ResNet(**TINY), tiny_data(), output_dir=run_dir, epochs=2, resume=True) == summary
    with pytest.raises(ValueError, match=r"config.json differs in recipe.epochs: stored 2, given 3; seed: stored 0"):
        training.train(nestzoo.ResNet(**TINY), tiny_data(), output_dir=run_dir, epochs=3, seed=1, resume=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a nestzoo run"):
        training.train(nestzoo.ResNet(**TINY), tiny_data(), output_dir=tmp_path, resume=True)


def test_divergence_stops_at_once_and_keeps_last_good_checkpoint(tmp_path):
    model = nestzoo.ResNEst(**TINY)  # named custom_resnest
    with pytest.raises(training.TrainingDiverged) as error:
        # fine for two epochs, then the learning rate explodes
        training.train(model, tiny_data(), output_dir=tmp_path, epochs=4, learning_rate=0.05, milestones=(2,),
                       gamma=1e30, verbose=0)
    message = str(error.value)
    assert re.search(r"became nan at batch [12] at epoch 3 ", message)  # one step at 5e28 suffices
    assert "custom_resnest is a ResNEst" in message and "trained them at 0.01" in message
    assert "Epoch 2's checkpoint is kept" in message and "--resume --continue-lr 5e+27" in message
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and (tmp_path / "checkpoint" / state["last"]["file"]).exists()
    assert len(list(csv.DictReader(open(tmp_path / "log.csv")))) == 2
    assert not (tmp_path / "summary.json").exists()
    model.load_weights(tmp_path / "best.weights.h5")
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # continue from epoch 2 at a lower rate (the passed milestone no longer applies), recorded in the config
    summary = training.train(nestzoo.ResNEst(**TINY), tiny_data(), output_dir=tmp_path, epochs=4, learning_rate=0.05,
                             milestones=(2,), gamma=1e30, verbose=0, resume=True, continue_learning_rate=0.01)
    assert summary["epochs"] == 4
    assert summary["config"]["learning_rate_changes"] == [{"after_epoch": 2, "initial_learning_rate": 0.01}]
    rates = [float(r["learning_rate"]) for r in csv.DictReader(open(tmp_path / "log.csv"))]
    assert rates == pytest.approx([0.05, 0.05, 0.01, 0.01])


def test_train_seeds_writes_table(tmp_path):
    earlier = tmp_path / "resnet20.standard" / "seed0"  # a finished run of an earlier call
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text(json.dumps({"config": {"model": "resnet20.standard", "arch": "resnet20",
                                                                 "variant": "standard", "data": "tf.data"},
                                                      "seed": 0, "test_accuracy": 0.5, "parameters": 1000}))
    summaries = training.train_seeds(tiny_a_resnest, tiny_data(n=32), seeds=[0, 1], output_dir=tmp_path,
                                     epochs=1, verbose=0)
    assert [s["seed"] for s in summaries] == [0, 1]
    assert summaries[0]["best_val_accuracy"] != summaries[1]["best_val_accuracy"] or (
        summaries[0]["test_loss"] != summaries[1]["test_loss"])  # seeds give other initializations
    assert (tmp_path / "tiny_a_resnest" / "seed1" / "model.keras").exists()
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["arch"], r["variant"], r["runs"], r["seeds"]) for r in rows] == [
        ("resnet20", "standard", "1", "0"), ("custom", "a-resnest", "2", "0 1")]  # every finished run in the folder
    accuracies = [100 * s["test_accuracy"] for s in summaries]
    cell = f"| custom |  | {np.mean(accuracies):.2f} ± {np.std(accuracies, ddof=1):.2f} (0."
    assert cell in (tmp_path / "results.md").read_text()


def test_evaluate_takes_a_name_a_datasets_object_or_tf_data(tmp_path):
    from nestzoo import data

    model = tiny_resnet()
    path = tmp_path / "model.keras"
    model.save(path)
    digits = data.load("digits", 64, augment=False)
    by_name = training.evaluate(str(path), "digits", verbose=0)
    assert training.evaluate(model, digits, verbose=0) == pytest.approx(by_name)
    assert training.evaluate(model, digits.test, verbose=0) == pytest.approx(by_name)
