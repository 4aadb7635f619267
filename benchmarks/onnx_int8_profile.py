"""Where onnxruntime spends its time in the float and int8 ONNX conversions of ResNet-20 (32x32x3, batch 128).

    python benchmarks/onnx_int8_profile.py                  # float, int8 as exported, int8 with int8 activations
    python benchmarks/onnx_int8_profile.py --level extended # another graph optimization level

The model (untrained, as in benchmarks/inference.py) is converted with nestzoo.runtimes:
`to_onnx`, then `quantize_onnx` calibrated on 64 random uint8 images, once with the
uint8 activations it exports and once with int8 activations. Each file is loaded in
onnxruntime (CPUExecutionProvider, 2 threads, --level), and the script prints:

* the node types of the graph onnxruntime runs after its optimizations;
* the throughput at batch 128, the three timed in turn (--rounds) without the profiler;
* each op type's share of the kernel time over --runs profiled calls
  (`SessionOptions.enable_profiling`).
"""
import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nestzoo  # noqa: E402
import numpy as np  # noqa: E402
from nestzoo import export, runtimes  # noqa: E402

#: --level: onnxruntime's GraphOptimizationLevel names.
LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
          "disabled": "ORT_DISABLE_ALL"}


def session(path, level, threads, **options):
    """An onnxruntime session of `path` at the optimization `level`, with SessionOptions `options` set."""
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    for name, value in options.items():
        setattr(settings, name, value)
    return ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])


def optimized_nodes(path, level, threads, tmp):
    """{op type: count} of the graph onnxruntime runs (its optimized model, saved and read back)."""
    import onnx

    saved = Path(tmp, Path(path).stem + f".{level}.optimized.onnx")
    session(path, level, threads, optimized_model_filepath=str(saved))
    return collections.Counter(node.op_type for node in onnx.load(str(saved)).graph.node)


def kernel_shares(path, level, threads, batch, runs, tmp):
    """({op type: share of the kernel time}, kernel milliseconds per call) over `runs` profiled calls."""
    profiled = session(path, level, threads, enable_profiling=True,
                       profile_file_prefix=str(Path(tmp, Path(path).stem)))
    for _ in range(3):
        profiled.run(None, {"images": batch})
    profiled.end_profiling()  # the warm-up's profile is dropped
    profiled = session(path, level, threads, enable_profiling=True,
                       profile_file_prefix=str(Path(tmp, Path(path).stem)))
    for _ in range(runs):
        profiled.run(None, {"images": batch})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    spent = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    total = sum(spent.values())
    return {op: us / total for op, us in spent.most_common()}, total / runs / 1e3


def throughputs(sessions, batch, rounds):
    """{name: images/s at the batch}: each round runs every session in turn, two warm-up calls and
    five timed ones, since a session's first calls after another onnxruntime session's are slower."""
    seconds = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for call in range(7):
                start = time.perf_counter()
                s.run(None, {"images": batch})
                if call >= 2:
                    seconds[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(times) for name, times in seconds.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", choices=LEVELS, default="all", help="onnxruntime's graph optimization level")
    p.add_argument("--runs", type=int, default=10, help="profiled batch-128 calls per model")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the unprofiled throughput timing")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import onnxruntime

    model = nestzoo.ResNet(arch="resnet20", input_shape=(32, 32, 3), classes=10)
    module = export.serving_module(model, dataset="cifar10")
    representative = [image[None] for image in np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3),
                                                                                  dtype=np.uint8)]
    batch = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        float_file = runtimes.to_onnx(module, Path(tmp, "float.onnx"))
        files = {"float": float_file,
                 "int8, uint8 activations (exported)": runtimes.quantize_onnx(
                     float_file, Path(tmp, "int8-u8.onnx"), representative),
                 "int8, int8 activations": runtimes.quantize_onnx(
                     float_file, Path(tmp, "int8-s8.onnx"), representative, activations="int8")}
        speed = throughputs({name: session(path, args.level, args.threads) for name, path in files.items()},
                            batch, args.rounds)
        print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, graph optimization level "
              f"{args.level}, ResNet-20 32x32x3 uint8, batch 128:")
        for name, path in files.items():
            nodes = optimized_nodes(path, args.level, args.threads, tmp)
            shares, milliseconds = kernel_shares(path, args.level, args.threads, batch, args.runs, tmp)
            print(f"\n{name}: {speed[name]:.0f} images/s ({speed[name] / speed['float']:.2f}x float); "
                  f"kernels {milliseconds:.1f} ms per call (profiled)")
            print("  nodes run: " + ", ".join(f"{op} {n}" for op, n in nodes.most_common()))
            print("  kernel time: " + ", ".join(f"{op} {100 * share:.0f}%" for op, share in shares.items()
                                                if share >= 0.005))


if __name__ == "__main__":
    main()
