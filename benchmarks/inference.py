"""Inference speed of an exported ResNet-20 SavedModel beside the same network in PyTorch eager.

    python benchmarks/inference.py                      # the export's default graph vs PyTorch
    python benchmarks/inference.py --all                # every graph option (fold x jit x call path)
    python benchmarks/inference.py --runtimes           # TensorFlow, onnxruntime, LiteRT (float, int8), PyTorch

The SavedModel (CIFAR-shaped 32x32x3 uint8 images, 10 classes, standardization in
the graph) is exported with nestzoo.export, loaded back with tf.saved_model.load and
called through its ``serving_default`` signature. PyTorch runs
benchmarks/torch_reference.py's network (the same pre-activation ResNet-20) in eval
mode under torch.inference_mode with 2 threads, on already-standardized float32
NCHW tensors (so it does less work: no uint8 conversion). Throughput: images/s over
--batches calls at batch 128; latency: median and p99 of --calls calls at batch 1.
Both run in the same process, one after the other; compare the ratios printed,
since a shared CPU's speed drifts between runs.

--runtimes converts the same model with nestzoo's converters (`nestzoo.runtimes`:
tf2onnx, the LiteRT converter, onnxruntime's static int8 quantization and LiteRT's
full-integer quantization) and times each file in its runtime with 2 threads, all
interleaved in one process. The int8 models are calibrated on 64 random uint8 images
(the model is untrained; speed does not depend on the weights' values, accuracy is
measured by ``nestzoo export --quantize int8`` on a trained run).
benchmarks/onnx_int8_profile.py profiles onnxruntime's float and int8 models per op type.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nestzoo  # noqa: E402  (sets TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from nestzoo import export  # noqa: E402


def interleaved(calls, batch, rounds, per_round, warmup):
    """{name: [seconds of each call]}: every call runs `per_round` times per round, in turn, so the
    drift of a shared CPU's speed reaches every candidate alike; each turn starts with an untimed
    call, since the first call after another runtime's is slower (onnxruntime's by up to 40%)."""
    for call in calls.values():
        for _ in range(warmup):
            call(batch[call])
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            x = batch[call]
            call(x)
            for _ in range(per_round):
                start = time.perf_counter()
                call(x)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def measure(calls, inputs_128, inputs_1, args):
    """{name: {"images/s", "median ms", "p99 ms"}} of every call, measured interleaved."""
    big = interleaved(calls, {c: inputs_128[n] for n, c in calls.items()}, args.batches // 2, 2, 3)
    small = interleaved(calls, {c: inputs_1[n] for n, c in calls.items()}, args.calls // 20, 20, 20)
    result = {}
    for name in calls:
        latencies = sorted(small[name])
        result[name] = {"images/s": 128 * len(big[name]) / sum(big[name]),
                        "median ms": 1e3 * statistics.median(latencies),
                        "p99 ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}
    return result


def tf_calls(directory):
    loaded = tf.saved_model.load(str(directory))
    signature = loaded.signatures["serving_default"]
    return loaded, {
        "signature": lambda x: signature(images=x)["probabilities"].numpy(),
        "function": lambda x: loaded.serve(x)["probabilities"].numpy(),
    }


def torch_call():
    import torch
    from torch_reference import reference_resnet

    torch.set_num_threads(2)
    net = reference_resnet("resnet20").eval()

    def call(x):
        with torch.inference_mode():
            return net(x).softmax(-1).numpy()

    return call, f"PyTorch {torch.__version__} eager (2 threads, inference_mode)"


def runtime_calls(model, tmp, threads=2):
    """{label: call(uint8 batch)} of the model converted to ONNX and LiteRT, float and int8."""
    from nestzoo import runtimes

    module = export.serving_module(model, dataset="cifar10")
    representative = [image[None] for image in np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3),
                                                                                  dtype=np.uint8)]
    onnx_float = runtimes.to_onnx(module, Path(tmp, "float.onnx"))
    files = {"onnxruntime float": onnx_float,
             "onnxruntime int8 (QDQ, uint8 activations)": runtimes.quantize_onnx(onnx_float, Path(tmp, "int8.onnx"),
                                                                                 representative),
             "LiteRT float (XNNPACK)": runtimes.to_litert(module, Path(tmp, "float.tflite")),
             "LiteRT int8 (full integer)": runtimes.to_litert(module, Path(tmp, "int8.tflite"), representative)}
    calls = {}
    for label, file in files.items():
        runtime = runtimes.Runtime(file, threads)
        calls[label] = (lambda r: lambda x: r(x)["probabilities"])(runtime)
    import onnxruntime
    import ai_edge_litert

    versions = f"onnxruntime {onnxruntime.__version__}, ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    return calls, versions


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300, help="batch-1 calls timed (median, p99)")
    p.add_argument("--batches", type=int, default=20, help="batch-128 calls timed (throughput)")
    p.add_argument("--all", action="store_true", help="time every graph option, not only the default")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--runtimes", action="store_true",
                   help="also time the ONNX and LiteRT conversions (float and int8) in their runtimes")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    model = nestzoo.ResNet(arch="resnet20", input_shape=(32, 32, 3), classes=10)
    rng = np.random.default_rng(0)
    images_128 = tf.constant(rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8))
    images_1 = images_128[:1]
    options = [("default", export.DEFAULT_FOLD_BATCH_NORM, export.DEFAULT_JIT_COMPILE)]
    if args.all:
        options = [(f"fold_batch_norm={f}, jit_compile={j}", f, j) for f in (True, False) for j in (False, True)]
    calls, inputs_128, inputs_1, keep = {}, {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for label, fold, jit in options:
            directory = export.export_saved_model(model, Path(tmp, label.replace(" ", "").replace(",", "_")),
                                                  dataset="cifar10", fold_batch_norm=fold, jit_compile=jit)
            loaded, paths = tf_calls(directory)
            keep.append(loaded)
            for path, call in paths.items() if label == "default" else [("signature", paths["signature"])]:
                name = f"SavedModel {label} ({path})"
                calls[name], inputs_128[name], inputs_1[name] = call, images_128, images_1
        versions = ""
        if args.runtimes:
            converted, versions = runtime_calls(model, tmp)
            for name, call in converted.items():
                calls[name], inputs_128[name], inputs_1[name] = call, images_128.numpy(), images_1.numpy()
        if not args.no_torch:
            import torch

            call, reference = torch_call()
            x = torch.from_numpy(rng.normal(size=(128, 3, 32, 32)).astype(np.float32))
            calls[reference], inputs_128[reference], inputs_1[reference] = call, x, x[:1].clone()
        results = measure(calls, inputs_128, inputs_1, args)
    print(f"TensorFlow {tf.__version__}, oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, {os.cpu_count()} CPUs; "
          f"{versions and versions + ', '}batch 128 ({args.batches} calls) and batch 1 ({args.calls} calls), "
          "interleaved:")
    for name, r in results.items():
        print(f"  {name:<62} {r['images/s']:>7.0f} images/s  median {r['median ms']:6.2f} ms  "
              f"p99 {r['p99 ms']:6.2f} ms")
    if args.no_torch:
        return
    ref = results[reference]
    print("ratios to PyTorch eager in this run (throughput: target >= 2; batch-1 latency: target <= 0.8):")
    for name, r in results.items():
        if name != reference:
            print(f"  {name:<62} throughput x{r['images/s'] / ref['images/s']:.2f}  "
                  f"median latency x{r['median ms'] / ref['median ms']:.2f}  "
                  f"p99 latency x{r['p99 ms'] / ref['p99 ms']:.2f}")

if __name__ == "__main__":
    main()
