"""What a training epoch spends outside training and evaluation: checkpoint commit, logging, plotting.

For ResNet-20 and WRN-16-8 (CIFAR-10 shapes, their real weights, BN statistics and
Nesterov momentum slots), runs `nestzoo.training`'s own per-epoch commit
(`run._RunState`: host copy of every variable, then a background thread that writes,
hashes, syncs and commits by renaming state.json, and publishes log.csv) and the
TensorBoard logging, `--epochs` times, with `--epoch-seconds` of idle time standing
for the training steps and evaluation in between (3 s: a CIFAR-10 epoch of WRN-16-8
on an H100). It reports per epoch:

- commit (main thread): what the training loop waits for, host copy plus any wait
  for the previous epoch's write, the part that counts against the epoch;
- commit (background): the write, off the training loop, which must stay below an epoch;
- logging: log.csv and the TensorBoard scalars, written by the background thread after
  each commit (so 0 on the main thread; included in "commit (background)");
- plotting: curves.png, drawn once at the end of a run (shown per run and per epoch of a 200-epoch run);
- the overhead (main-thread commit + logging) as a fraction of the epoch: the target is <= 5%;
- for comparison, a synchronous Keras ``model.save_weights`` of the same state (what each
  epoch did before).

`--time-steps N` also times N training steps and evaluation batches on this machine
(batch 128, extrapolated to an epoch of 391 steps and 79 test batches); on a CPU they
are far slower than on the GPU the 3-second epoch refers to.

    python benchmarks/epoch_overhead.py                       # both models, 6 epochs each
    python benchmarks/epoch_overhead.py --arch wrn16-8 --epochs 10 --output /fast/disk
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import nestzoo  # sets nestzoo's TensorFlow defaults before TensorFlow is imported


def build(arch):
    import keras

    from nestzoo import training

    model = nestzoo.create_model(f"{arch}.standard", input_shape=(32, 32, 3), classes=10)
    optimizer = training.get_recipe("paper").optimizer(resnest=False, steps_per_epoch=391)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def time_steps(model, steps):
    """(train seconds per epoch, evaluation seconds per epoch) extrapolated from `steps` batches."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    batch = (rng.random((128, 32, 32, 3), "float32"), rng.integers(0, 10, 128))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)  # tracing
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    train = (time.perf_counter() - started) / steps * 391
    model.evaluate(data, steps=1, verbose=0)
    started = time.perf_counter()
    model.evaluate(data, steps=steps, verbose=0)
    return train, (time.perf_counter() - started) / steps * 79


def measure(arch, args):
    from nestzoo import training
    from nestzoo.training import checkpoint, report, run

    model = build(arch)
    variables = checkpoint.state_variables(model)
    size = sum(v.numpy().nbytes for v in variables)
    steps = time_steps(model, args.time_steps) if args.time_steps else None
    with tempfile.TemporaryDirectory(dir=args.output) as directory:
        run_dir = Path(directory)
        schedule = training.MultiStepSchedule(0.1, 391, (60, 120, 160), 0.2)
        state = checkpoint.load_state(run_dir)
        run_state = run._RunState(run_dir, schedule, 391, 50_000, state, arch)
        run_state.set_model(model)
        commit, logging = [], []
        rng = np.random.default_rng(0)
        for epoch in range(args.epochs):
            run_state.on_epoch_begin(epoch)
            time.sleep(args.epoch_seconds)  # the training steps and the evaluation
            run_state.on_test_begin()
            logs = {"loss": float(rng.random()), "accuracy": float(rng.random()),
                    "val_loss": float(rng.random()), "val_accuracy": float(rng.random())}
            started = time.perf_counter()
            run_state.on_epoch_end(epoch, logs)
            commit.append(time.perf_counter() - started)
            logging.append(0.0)  # log.csv and TensorBoard are written by the commit's thread
        started = time.perf_counter()
        run_state.committer.wait()
        final_wait = time.perf_counter() - started
        started = time.perf_counter()
        config = {"model": arch, "data": "cifar10", "seed": 0, "validation": "test"}  # the plot's title and labels
        report.plot_curves(run_state.state["history"], run_dir / "curves.png", config)
        plotting = time.perf_counter() - started
        assert checkpoint.load_state(run_dir)["epoch"] == args.epochs
        started = time.perf_counter()
        model.save_weights(run_dir / "sync.weights.h5")
        synchronous = time.perf_counter() - started
    steady = commit[1:] or commit  # the first epoch also starts the writer's imports and folder
    return {
        "arch": arch, "megabytes": size / 1e6, "variables": len(variables), "steps": steps,
        "commit": statistics.median(steady), "commit_max": max(steady), "final_wait": final_wait,
        "background": statistics.median(run_state.committer.write_seconds),
        "logging": statistics.median(logging), "plotting": plotting, "synchronous": synchronous,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["resnet20", "wrn16-8"], help="registered archs")
    p.add_argument("--epochs", type=int, default=6, help="epochs committed per model")
    p.add_argument("--epoch-seconds", type=float, default=3.0,
                   help="the epoch's training and evaluation time (3 s: WRN-16-8 on an H100)")
    p.add_argument("--time-steps", type=int, default=0, help="also time this many training steps here")
    p.add_argument("--output", help="folder for the run directories (default: the system's temporary folder)")
    args = p.parse_args()
    print(f"per epoch, {args.epochs} epochs, {args.epoch_seconds:g} s of training and evaluation each; "
          "medians after the first epoch")
    header = (f"{'model':<10} {'state MB':>8} {'commit (main)':>13} {'max':>7} {'commit (bg)':>11} "
              f"{'logging':>8} {'plot/run':>8} {'plot/200ep':>10} {'overhead':>8} {'sync save':>9}")
    print(header)
    for arch in args.arch:
        r = measure(arch, args)
        overhead = (r["commit"] + r["logging"]) / args.epoch_seconds
        print(f"{r['arch']:<10} {r['megabytes']:>8.1f} {1e3 * r['commit']:>10.1f} ms {1e3 * r['commit_max']:>4.0f} ms "
              f"{1e3 * r['background']:>8.0f} ms {1e3 * r['logging']:>5.1f} ms {1e3 * r['plotting']:>5.0f} ms "
              f"{1e3 * r['plotting'] / 200:>7.1f} ms {100 * overhead:>7.2f}% {1e3 * r['synchronous']:>6.0f} ms")
        if r["steps"]:
            print(f"{'':<10} measured here: training steps {r['steps'][0]:.1f} s/epoch, evaluation "
                  f"{r['steps'][1]:.1f} s/epoch")


if __name__ == "__main__":
    main()
