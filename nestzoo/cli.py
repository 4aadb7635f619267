"""The ``nestzoo`` command: list, summarize, train, tune, analyze, evaluate and export models, and predict with them.

Building the parser and `nestzoo models` import neither TensorFlow nor Keras; the
subcommands that need them import them. The command discards TensorFlow's C++
start-up log (oneDNN notices, CUDA probing on a machine without a GPU) unless
NESTZOO_TF_LOG=1; importing the library changes no logging.
"""
import argparse
import contextlib
import difflib
import os
import math
import shlex
import sys
import time
from pathlib import Path

from nestzoo import __version__, registry, specs, training
from nestzoo.data.catalog import DATASETS
from nestzoo.data.cifar_files import DatasetNotFoundError
from nestzoo.recipe import RECIPES, get_recipe
from nestzoo.training.checkpoint import read_config
from nestzoo.training.runtime import PRECISIONS

TF_LOG_VARIABLE = "NESTZOO_TF_LOG"
SUMMARY_WIDTH = 140  # `nestzoo summary` into a file or a pipe


@contextlib.contextmanager
def _stderr_discarded():
    """File descriptor 2 sent to /dev/null: C++ logs bypass sys.stderr."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _start_tensorflow():
    """Import TensorFlow and probe its devices with the C++ log discarded, unless NESTZOO_TF_LOG=1.

    TF_CPP_MIN_LOG_LEVEL=2 (unless set) keeps later info and warnings out; the
    start-up lines ignore it (TensorFlow issue 100442), so they are discarded.
    """
    if os.environ.get(TF_LOG_VARIABLE) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_discarded():
        import tensorflow as tf

        tf.config.list_physical_devices()


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: ...)" to options whose help does not state their default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _patterns(pattern):
    """Patterns that match registered models: the arch families, the variants, and names close to `pattern`."""
    archs = list(dict.fromkeys(registry.canonical(arch).rstrip("0123456789-") for arch in registry.ARCHS))
    variants = list(dict.fromkeys(v for family in registry.FAMILY_VARIANTS.values() for v in family))
    close = difflib.get_close_matches(registry.canonical(pattern), list(registry.ARCHS) + variants, n=3, cutoff=0.5)
    return close + [f"{arch}*" for arch in archs] + [f"*.{variant}" for variant in variants]


def _models(args):
    names = registry.list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; patterns that match: "
                         f"{', '.join(_patterns(args.pattern))} (see `nestzoo models`)")
    print("\n".join(names))


def _check_summary(args):
    registry.parse_name(args.model)


def _summary(args):
    import nestzoo

    model = nestzoo.create_model(args.model, classes=args.classes)
    if sys.stdout.isatty():
        model.summary()  # the terminal's width
    else:  # a file or a pipe: wide enough for every name, not rich's 80 columns
        os.environ["COLUMNS"] = str(SUMMARY_WIDTH)
        model.summary(line_length=SUMMARY_WIDTH)


def _model_names(archs, variants):
    """Registry names of archs x variants, accepting the spellings the builders accept (`registry.parse_name`)."""
    names = []
    for arch in archs:
        names += [".".join(registry.parse_name(f"{arch}.{v}")[1:]) for v in variants]
    return names


def _print_runs(summaries, output):
    print(f"\n{'model':<28} {'seed':>4} {'params':>10} {'test acc':>9} {'best val':>9} {'s/epoch':>8} {'images/s':>9}")
    for s in summaries:
        print(f"{s['config']['model']:<28} {s['seed']:>4} {s['parameters']:>10,} {100 * s['test_accuracy']:>8.2f}% "
              f"{100 * s['best_val_accuracy']:>8.2f}% {s['seconds_per_epoch']:>8.2f} {s['images_per_second']:>9.0f}")
    print(f"\nruns in {output}/ (model.keras, best.weights.h5, log.csv, summary.json, curves.png, tensorboard/)")


def _fraction_or_count(text):
    """--validation: a fraction of the training set (0.1) or a count of examples (5000)."""
    return int(text) if text.isdigit() else _finite_float(text)


def _finite_float(text):
    """A float option: nan and inf are refused (they would surface later as a divergence)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_int(text):
    """An integer option >= 1 (`nestzoo.specs.positive_int`)."""
    try:
        return specs.positive_int("the value", int(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}" if "positive" in str(error) else
                                         f"{text!r} is not an integer") from None


def _resume_command(argv, output):
    """The command line that continues an interrupted `nestzoo train`."""
    argv = list(argv)
    if "--output" not in argv and not any(a.startswith("--output=") for a in argv):
        argv += ["--output", output]
    if "--resume" not in argv:
        argv.append("--resume")
    return "nestzoo " + " ".join(shlex.quote(a) for a in argv)


def _describe(recipe, scaled_from=None):
    """The recipe as `nestzoo train` prints it; `scaled_from` is the recipe whose milestones were scaled."""
    learning_rate = (f"{recipe.learning_rate:g}" if recipe.learning_rate is not None else
                     f"{recipe.base_learning_rate:g} ({recipe.resnest_learning_rate:g} for ResNEsts)")
    milestones = ", ".join(map(str, recipe.milestones)) or "none"
    if scaled_from and scaled_from.milestones != recipe.milestones:
        milestones += (f" (the recipe's {', '.join(map(str, scaled_from.milestones))} of {scaled_from.epochs} "
                       "epochs, scaled)")
    return (f"recipe {recipe.name}: {recipe.epochs} epochs, batch {recipe.batch_size}, learning rate "
            f"{learning_rate} x{recipe.gamma:g} after epochs {milestones}")


def _data_options(args):
    return {"source": args.source, "data_dir": args.data_dir, "download": not args.no_download}


def _cluster(args):
    """--chief or --worker: sets `args.cluster` (keras-tuner's oracle environment, checked: a chief's
    port is free) and returns the address, or None for a local job."""
    from nestzoo.tuning import cluster

    if args.chief and args.worker:
        raise ValueError("give --chief or --worker, not both")
    address = args.chief or args.worker
    args.cluster = address and cluster.environment(address, None if args.chief else (args.worker_id or ""))
    if args.chief:
        cluster.check_port(args.cluster["KERASTUNER_ORACLE_IP"], args.cluster["KERASTUNER_ORACLE_PORT"])
    return address


def _check_train(args):
    """The model names, the recipe and the grid's address, checked before TensorFlow is imported."""
    from nestzoo import published

    if args.paper:  # the whole grid of Table 1 or 2 (appendix B.4): 4 archs x 4 variants x seeds 0..6
        if args.arch or args.variant:
            raise ValueError(f"--paper {args.paper} names the archs and variants of Table {args.paper}; "
                             "drop --arch/--variant (or drop --paper)")
        args.arch, args.variant = list(published.ARCHS), list(published.VARIANTS)
        args.dataset = published.TABLES[args.paper]
    args.arch, args.variant = args.arch or ["resnet20"], args.variant or ["a-resnest"]
    if args.seeds is None:
        args.seeds = list(range(7)) if args.paper else [0]
    address = _cluster(args)
    if address and not args.output:
        raise ValueError("--chief/--worker need --output: the output folder every machine shares")
    if address and args.strategy == "multi-worker":
        raise ValueError("--strategy multi-worker trains one run on several machines; --chief/--worker spread "
                         "the runs of a grid: give one or the other")
    if args.strategy == "multi-worker":
        from nestzoo.training import multiworker

        multiworker.read_tf_config()
    args.models = _model_names(args.arch, args.variant)
    args.training_recipe = get_recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                                      learning_rate=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                      milestones=args.milestones, gamma=args.gamma)


def _train(args):
    recipe = args.training_recipe
    print(_describe(recipe, scaled_from=RECIPES[args.recipe] if args.milestones is None else None), flush=True)
    strategy = None
    if args.mirrored or args.strategy == "mirrored":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
    elif args.strategy == "multi-worker":
        from nestzoo.training import multiworker

        strategy = multiworker.strategy_from_environment()
    output = args.output or time.strftime("runs/%Y%m%d-%H%M%S")
    if args.cluster:
        return _train_grid(args, recipe, output)
    try:
        summaries = training.train_seeds(
            args.models, args.dataset, args.seeds, output_dir=output, recipe=recipe,
            precision=args.precision, jit_compile=args.jit_compile, strategy=strategy, resume=args.resume,
            validation=args.validation, data_options=_data_options(args), verbose=args.verbose,
            continue_learning_rate=args.continue_lr, deterministic=args.deterministic,
        )
    except training.TrainingInterrupted as stop:
        sys.stderr.write(f"\nnestzoo train: interrupted; {stop.run_dir} has epoch {stop.epoch} of {stop.epochs} "
                         f"committed. Continue with: {_resume_command(args.argv, output)}\n")
        sys.exit(130)
    if None in summaries:  # a multi-worker run's non-chief worker
        print(f"{len(summaries)} run(s) trained with the cluster of TF_CONFIG; the chief wrote them")
        return
    _print_runs(summaries, output)
    if len(summaries) > 1:
        print("\n" + training.results_markdown(training.results_rows(summaries)))
    print(f"test accuracy: {100 * sum(s['test_accuracy'] for s in summaries) / len(summaries):.2f}%")


def _train_grid(args, recipe, output):
    """`nestzoo train --chief/--worker`: the grid's runs as keras-tuner trials (`nestzoo.training.grid`)."""
    os.environ.update(args.cluster)
    from nestzoo.training import grid

    outcome, summaries = grid.run_grid(
        args.models, args.dataset, args.seeds, output_dir=output, patience=args.patience, resume=args.resume,
        recipe=recipe, precision=args.precision, jit_compile=args.jit_compile, validation=args.validation,
        data_options=_data_options(args), verbose=args.verbose, deterministic=args.deterministic)
    if args.worker:
        print(f"worker {args.worker_id}: the chief has no more runs; results.md is in {output}/")
        return
    if summaries:
        print("\n" + training.results_markdown(training.results_rows(summaries)))
    print(f"{len(summaries)} of {len(args.models) * len(args.seeds)} runs finished in {output}/ "
          "(results.md, results.csv)")
    if outcome == "abandoned":
        sys.exit(f"nestzoo train: no worker was heard from for {args.patience:g} s; restart the chief with "
                 "--resume (finished epochs are kept)")


def _run_model(given, dataset):
    """(model.keras path, data set) of a run directory or a .keras file.

    The data set is `dataset` if given, else the run's (its config.json), else digits.
    """
    path = Path(given)
    run_dir, model = (path, path / "model.keras") if path.is_dir() else (path.parent, path)
    if not model.is_file():
        raise FileNotFoundError(f"{path} holds no model.keras: it is not a finished run directory" if path.is_dir()
                                else f"{path} does not exist: give a run directory or a .keras file")
    if dataset is None:
        dataset = read_config(run_dir)["data"] if (run_dir / "config.json").is_file() else "digits"
    if dataset not in DATASETS:
        raise ValueError(f"{run_dir / 'config.json'} names the data {dataset!r}, not one of nestzoo's: give the data "
                         f"set to test on, --dataset {{{','.join(sorted(DATASETS))}}}")
    return model, dataset


def _is_preset(given):
    from nestzoo import presets

    return presets.is_preset(given) or str(given).startswith(("https://", "http://")) or (
        ":" in str(given) and not Path(given).exists())


def _check_evaluate(args):
    args.preset = _is_preset(args.model)
    if args.preset:  # found and verified before TensorFlow starts
        from nestzoo import presets

        args.model = str(presets.find(args.model))
    else:
        args.model_file, args.dataset = _run_model(args.model, args.dataset)


def _evaluate_preset(args):
    from nestzoo.training.experiments import evaluate_preset

    result = evaluate_preset(args.model, args.dataset, batch_size=args.batch_size, verbose=args.verbose,
                             **_data_options(args))
    published = result["published_accuracy"]
    print(f"{result['preset']} on {result['dataset']} (test): loss {result['loss']:.4f}, measured accuracy "
          f"{result['measured_accuracy']:.2f}%, published "
          + ("(none recorded)" if published is None else f"{published:.2f}%"))


def _evaluate(args):
    if args.preset:
        return _evaluate_preset(args)
    result = training.evaluate(args.model_file, args.dataset, batch_size=args.batch_size, verbose=args.verbose,
                               **_data_options(args))
    print(f"{args.model_file} on {args.dataset} (test): loss {result['loss']:.4f}, "
          f"accuracy {100 * result['accuracy']:.2f}%")


def _export(args):
    from nestzoo import export

    try:
        directory = export.export(args.model, args.base_dir, name=args.name, version=args.version,
                                  dataset=args.dataset, fold_batch_norm=args.fold_batch_norm,
                                  jit_compile=args.jit_compile, format=args.format, quantize=args.quantize,
                                  calibration=args.calibration)
    except ImportError as error:  # a format's extra missing: the message names it
        raise ValueError(str(error)) from error
    metadata = export.read_metadata(directory)
    inputs = f"{metadata['input']['dtype']} {metadata['input']['name']}"
    if args.format == "saved_model":
        print(f"SavedModel written to {directory} (signature serving_default: {inputs} -> "
              f"{', '.join(metadata['outputs'])}; metadata in assets/{export.METADATA_FILE})")
        return
    check = metadata["verification"]
    print(f"{args.format} model written to {directory / metadata['file']} ({inputs} -> "
          f"{', '.join(metadata['outputs'])}; metadata in {export.METADATA_FILE} beside it); checked in "
          f"{check['runtime']} against the Keras model on {check['batch']} images: largest difference "
          f"{check['max_abs_difference']:.2g}")
    if args.quantize:
        q = metadata["int8"]
        print(f"int8 ({q['calibration_images']} calibration images): test accuracy {100 * q['test_accuracy']:.2f}% "
              f"vs float {100 * q['float_test_accuracy']:.2f}% on {q['test_images']} {q['dataset']} test images")


def _predict(args):
    from nestzoo.predict import Predictor, format_rows, read_inputs

    try:
        predictor = Predictor(args.model, dataset=args.dataset)
    except ImportError as error:  # an ONNX or LiteRT export without its runtime: the message names the extra
        raise ValueError(str(error)) from error
    names, batch = read_inputs(args.images, predictor, range_check=args.range_check)
    print(format_rows(predictor.top_k(batch, names, args.top_k), as_json=args.json))


def _add_export(sub):
    export = sub.add_parser(
        "export", help="write a run's model as a versioned SavedModel (TF Serving), ONNX or LiteRT model",
        description="Write saved_models/<name>/<version>/ (TF Serving's layout): signature serving_default takes "
                    "uint8 images (N, H, W, C) as the data set stores them, standardizes them in the graph and "
                    "returns probabilities, class_ids and logits (regressors: predictions); signature "
                    "standardized takes float32 standardized inputs. --format onnx|litert writes <version>/model.onnx "
                    "or model.tflite with nestzoo.json beside it, the same uint8 images in and outputs, checked "
                    "in its runtime against the Keras model. The export is written beside the target and "
                    "renamed into place; an existing version is never overwritten. See saved_models/README.md.")
    export.add_argument("model", metavar="RUN_DIR_OR_MODEL",
                        help="a run directory (runs/<date-time>/resnet20.a-resnest/seed0; its config.json names "
                             "the data set), a .keras file, or a preset directory (its metadata names the data set)")
    export.add_argument("--name", help="model name under --base-dir (default: the registry name, resnet20_a-resnest)")
    export.add_argument("--version", type=_positive_int, help="version number (default: the next after the existing ones)")
    export.add_argument("--base-dir", default="saved_models", help="where model names live (default saved_models)")
    export.add_argument("--dataset", help="the data set whose standardization is built in (cifar10, cifar100, "
                                          "digits); default the run's, required for a bare .keras file")
    export.add_argument("--fold-batch-norm", action=argparse.BooleanOptionalAction, default=True,
                        help="fold batch normalization into the convolutions and freeze the weights (default on: "
                             "fastest; off exports the Keras model's own call)")
    export.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA-compile the serving function (default off: TF Serving runs it only with "
                             "--xla_cpu_compilation_enabled; measured on a 2-core CPU it lowers batch-1 latency "
                             "and cuts batch-128 throughput, see README)")
    export.add_argument("--format", choices=("saved_model", "onnx", "litert"), default="saved_model",
                        help="saved_model (default, TF Serving), onnx (<version>/model.onnx, converted by tf2onnx, "
                             "checked in onnxruntime; pip install 'nestzoo[onnx]') or litert (<version>/"
                             "model.tflite, LiteRT converter, checked in ai_edge_litert; 'nestzoo[litert]')")
    export.add_argument("--quantize", choices=("int8",), help="int8: static full-integer quantization (onnx, "
                        "litert); its test accuracy is measured and written to nestzoo.json")
    export.add_argument("--calibration", type=_positive_int, metavar="N",
                        help="with --quantize: calibrate on the first N training images of the run's data set")
    export.set_defaults(run=_export)


def _add_predict(sub):
    predict = sub.add_parser(
        "predict", help="top-k classes of images from an export or a .keras model",
        description="Run an export (saved_models/<name>/<version>, or saved_models/<name> for its latest version; "
                    "a SavedModel in TensorFlow, model.onnx in onnxruntime, model.tflite in LiteRT) "
                    "or a .keras model on PNG/JPEG files, folders of them, or .npy arrays (N, H, W, C) of uint8. "
                    "Images of another size are refused, not resized; 16-bit PNGs are scaled to 0..255; float "
                    "arrays and images whose largest value is below 32 (another scale, such as scikit-learn's "
                    "0..16 digits) are refused.")
    predict.add_argument("model", metavar="EXPORT_OR_KERAS_FILE",
                         help="an export directory (saved_models/<name> for its latest version, or "
                              "saved_models/<name>/<version>) or a .keras file")
    predict.add_argument("images", nargs="+", metavar="IMAGES", help="PNG or JPEG files, folders of them, .npy arrays")
    predict.add_argument("--top-k", type=_positive_int, default=3, help="classes shown per image (default 3)")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument("--dataset", help="for a .keras file outside a run directory: its data set")
    predict.add_argument("--range-check", action=argparse.BooleanOptionalAction, default=True,
                         help="refuse images whose largest value is below 32 (default on)")
    predict.set_defaults(run=_predict)


def _analyze(args):
    """The theory report of a saved model (nestzoo.theory): condition, Assumption 4, R, A, epsilon, block risks."""
    import dataclasses
    import json
    import os

    from nestzoo import saving, theory

    path = os.path.join(args.model, "model.keras") if os.path.isdir(args.model) else args.model
    if not os.path.isfile(path):
        raise ValueError(f"{args.model!r} is neither a .keras file nor a run directory holding model.keras")
    model = saving.load_model(path)  # refuses a damaged file and non-finite weights by name
    report = {"model": path, "dataset": args.dataset}
    try:
        condition, rank = theory.bottleneck_condition(model), theory.assumption4(model)
        report.update(bottleneck_condition=dataclasses.asdict(condition), assumption4=dataclasses.asdict(rank))
        for s, r in zip(condition.stages, rank.stages):
            print(f"stage {s.stage}: M = {s.width} {'>=' if s.holds else '<'} sum K = {' + '.join(map(str, s.features))}"
                  f" = {s.total} (margin {s.margin}); Assumption 4: rank {r.rank}/{r.columns} on grid {r.grid}, "
                  f"smallest singular value {r.smallest_singular_value:.3g} (tolerance {r.tolerance:.2g})")
    except ValueError as error:  # a DenseNEst: Proposition 3 needs no width condition
        print(f"bottleneck condition / Assumption 4: {error}")
    try:
        bound = theory.erlb(model, args.dataset, batch_size=args.batch_size, max_iter=args.max_iter)
        report["erlb"] = dataclasses.asdict(bound)
        print(f"Proposition 2 ({bound.loss}, {bound.examples} training examples): R = {bound.R:.6g}, "
              f"A = {bound.A:.6g}, epsilon = R - A = {bound.epsilon:.6g}")
    except ValueError as error:  # an A-ResNEst is its own bound; a standard head is not linear in the features
        print(f"Proposition 2: {error}")
    risks = theory.block_risks(model, args.dataset, batch_size=args.batch_size, max_iter=args.max_iter)
    report["block_risks"] = dataclasses.asdict(risks)
    print(risks.table())
    stem = os.path.splitext(path)[0] + "_theory"
    theory.plot_block_risks(risks, stem + ".png", title=f"{model.name} on {args.dataset}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {stem}.png and {stem}.json")


_VARIANTS_HELP = (
    "variants: " + "; ".join(f"{', '.join(v)} ({family})" for family, v in registry.FAMILY_VARIANTS.items())
    + ". Case, dashes and underscores may differ (AResNEst, aresnest, a_resnest are a-resnest) and the "
    "family's name means standard (resnet, densenet); other names are refused")


def _add_train(sub):
    train = sub.add_parser(
        "train", help="train models with the paper's recipe (appendix B.3), one run per model and seed",
        description="Train arch x variant x seed runs; each run directory holds model.keras, best.weights.h5, "
                    "log.csv, tensorboard/, summary.json and curves.png; results.md/.csv tabulate the mean and "
                    "std of the test accuracy over seeds as the paper's Tables 1 and 2. Unset recipe options "
                    "keep the recipe's values (paper: batch 128, 200 epochs, SGD Nesterov 0.9, coupled weight "
                    "decay 5e-4, lr 0.1 or 0.01 for ResNEsts, x0.2 after epochs 60, 120, 160).",
        formatter_class=_HelpFormatter)
    train.add_argument("--arch", nargs="+", help="architectures (see `nestzoo models`) (default: resnet20)")
    train.add_argument("--variant", nargs="+", help=_VARIANTS_HELP + " (default: a-resnest)")
    train.add_argument("--paper", type=int, choices=(1, 2),
                       help="the grid of the paper's Table 1 (CIFAR-10) or 2 (CIFAR-100): its 4 archs x 4 variants, "
                            "seeds 0..6 unless --seeds")
    train.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="data set (digits needs no download)")
    train.add_argument("--validation", type=_fraction_or_count,
                       help="fraction (0.1) or count (5000) of the training set held out to pick the best "
                       "weights (default: the test set, as the paper)")
    _add_data_options(train)
    train.add_argument("--recipe", choices=list(RECIPES), default="paper", help="paper: appendix B.3; quick: 30 epochs")
    train.add_argument("--epochs", type=_positive_int,
                       help="override the recipe's epochs (its milestones scale with them; with --resume, more "
                            "epochs extend a run)")
    train.add_argument("--batch-size", type=_positive_int, help="override the recipe's batch size")
    train.add_argument("--lr", type=_finite_float, help="initial learning rate (default: 0.1, or 0.01 for ResNEsts)")
    train.add_argument("--momentum", type=_finite_float, help="Nesterov momentum")
    train.add_argument("--weight-decay", type=_finite_float, help="coupled weight decay (PyTorch's SGD)")
    train.add_argument("--milestones", type=int, nargs="+",
                       help="epochs after which the lr is multiplied by gamma (default: the recipe's, scaled "
                            "by --epochs / the recipe's epochs and rounded down)")
    train.add_argument("--gamma", type=_finite_float, help="learning-rate factor at each milestone")
    train.add_argument("--seeds", type=int, nargs="*", help="seeds, one run each (paper: 0 1 2 3 4 5 6; --paper: those) (default: 0)")
    train.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: mixed_float16 on a GPU, float32 on a CPU")
    train.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                       help="XLA compilation (default: on with a GPU, off on a CPU, whichever is faster)")
    train.add_argument("--mirrored", action="store_true", help="train on every local GPU with MirroredStrategy")
    train.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"), default="default",
                       help="mirrored: every local GPU; multi-worker: one run data-parallel over the machines of "
                            "the standard TF_CONFIG (MultiWorkerMirroredStrategy)")
    train.add_argument("--chief", metavar="HOST:PORT",
                       help="serve the grid of runs (keras-tuner's distributed oracle) on HOST:PORT; workers train them")
    train.add_argument("--worker", metavar="HOST:PORT", help="train runs of the grid served by the chief at HOST:PORT")
    train.add_argument("--worker-id", help="this worker's unique name, e.g. gpu0")
    train.add_argument("--patience", type=_finite_float, default=60.0,
                       help="seconds of silence after which a worker stops, the chief hands a worker's run to "
                            "another, and a chief with no run going and no worker ends")
    train.add_argument("--output", help="output directory (default runs/<date-time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the runs in --output from their last finished epoch (a new directory "
                            "just starts); without it a directory holding a run is refused")
    train.add_argument("--continue-lr", type=_finite_float,
                       help="with --resume: continue from the last committed epoch at this learning rate (x gamma "
                            "at each later milestone), e.g. after a divergence; recorded in config.json")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic TensorFlow kernels (bit-identical reruns on GPUs; CPUs already are)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress: 1 bars, 2 lines")
    train.set_defaults(run=_train, check=_check_train)


def _add_data_options(command):
    command.add_argument("--source", help="a local copy of CIFAR (a folder or archive of the python or binary "
                                          "layout) instead of tensorflow-datasets")
    command.add_argument("--data-dir", help="tensorflow-datasets' folder (default: $TFDS_DATA_DIR or "
                                            "~/tensorflow_datasets)")
    command.add_argument("--no-download", action="store_true",
                         help="use only a copy tensorflow-datasets prepared already; never download")


def _check_tune(args):
    """The names, the search space and the chief's address, checked before TensorFlow is imported."""
    from nestzoo.tuning import space

    space.check_choice("tuner", args.tuner, space.TUNERS)
    space.check_choice("objective", args.objective, space.OBJECTIVES)
    _cluster(args)
    stages = None if args.inputs == "vector" else len(args.blocks)
    widths = args.width
    if len(widths) % 2 or (len(widths) > 2 and len(widths) != 2 * (stages or 1)):
        raise ValueError(f"--width takes MIN MAX (one M), or MIN MAX per stage ({stages} stages); got {widths}")
    features = None if args.feature_range else args.features
    vector = args.inputs == "vector"
    args.space = space.WidthSpace(
        inputs=args.inputs, variant=args.variant, blocks=args.blocks[0] if vector else tuple(args.blocks),
        block=args.block, width=tuple(widths) if len(widths) == 2 else tuple(zip(widths[::2], widths[1::2])),
        ratios=tuple(args.ratios), learning_rate=args.lr_range and tuple(args.lr_range),
        features=features and (features[0] if vector or len(features) == 1 else tuple(features)),
        feature_range=args.feature_range and tuple(args.feature_range), allow_violations=args.allow_violations)


def _tune(args):
    if args.cluster:
        os.environ.update(args.cluster)
    from nestzoo import tuning

    output = args.output or time.strftime("sweeps/%Y%m%d-%H%M%S")
    sweep = tuning.run_sweep(args.space, args.dataset, output, tuner=args.tuner, objective=args.objective,
                             max_trials=args.max_trials, epochs=args.epochs, batch_size=args.batch_size,
                             validation=args.validation, seed=args.seed, resume=args.resume,
                             overwrite=args.overwrite, patience=args.patience, verbose=args.verbose)
    if args.worker:
        print(f"worker {args.worker_id}: the chief has no more trials; the report is the chief's")
        return
    print("\n" + sweep.markdown)
    completed = any(r["status"] == "COMPLETED" for r in sweep.rows)
    print(f"sweep in {output}/ (report.csv, report.md, score_vs_width.png"
          + (", best_model.keras)" if sweep.best_model else
             "; best_model.keras not written: the best trial's checkpoint is on its worker's machine)" if completed
             else "; no trial completed)"))
    if sweep.outcome == "abandoned":
        sys.exit(f"nestzoo tune: no worker was heard from for {args.patience:g} s; the report holds the trials so far")


def _add_tune(sub):
    tune = sub.add_parser(
        "tune", help="keras-tuner sweep of the expansion width M that honours the bottleneck condition",
        description="Search M (and K, the learning rate) of a ResNet-family network with keras-tuner. The M range "
                    "is raised to the smallest width for which the bottleneck condition M >= sum K_i (Section 3.2) "
                    "holds on the whole search space, so every trained trial satisfies it (--allow-violations keeps "
                    "the range as given and marks violating trials). Each trial trains with the recipe's CoupledSGD "
                    "and multi-step schedule scaled to --epochs. The output directory gets report.csv, report.md, "
                    "score_vs_width.png and best_model.keras. Distributed (keras-tuner's chief/worker mode): one "
                    "process with --chief HOST:PORT, workers with --worker HOST:PORT --worker-id NAME and the same "
                    "arguments; every process ends by itself within --patience seconds of its peers going silent.",
        formatter_class=_HelpFormatter)
    tune.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="data set (digits needs no download)")
    tune.add_argument("--validation", type=_fraction_or_count, default=0.1,
                      help="fraction or count of the training set held out to score the trials")
    tune.add_argument("--inputs", "--family", dest="inputs", choices=("image", "vector"), default="image",
                      help="image: stages of residual blocks; vector: arch='mlp' on the flattened images "
                           "(--family: its former name)")
    tune.add_argument("--variant", default="a-resnest", help="standard, resnest, bn-resnest or a-resnest")
    tune.add_argument("--blocks", type=int, nargs="+", default=[2, 2, 2],
                      help="blocks per stage (image) or L (vector: one number)")
    tune.add_argument("--block", choices=("basic", "pointwise"), default="basic", help="residual block type (image)")
    tune.add_argument("--width", type=int, nargs="+", default=[4, 32], metavar="MIN MAX",
                      help="M range: MIN MAX for one M (stage s gets M * ratio s), or MIN MAX per stage")
    tune.add_argument("--ratios", type=int, nargs="+", default=[1, 2, 4], help="stage multipliers of M (and of a searched K)")
    tune.add_argument("--features", type=int, nargs="+", default=[4],
                      help="fixed K: one, or one per stage (ignored with --feature-range)")
    tune.add_argument("--feature-range", type=int, nargs=2, metavar=("MIN", "MAX"), help="search K in this range")
    tune.add_argument("--lr-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                      help="search the initial learning rate (log scale); default the recipe's")
    tune.add_argument("--allow-violations", action="store_true",
                      help="keep the M range as given: violating widths train and are marked in the report")
    tune.add_argument("--tuner", default="random", help="random, bayesian or hyperband (epochs = its max_epochs)")
    tune.add_argument("--objective", default="val_accuracy", help="val_accuracy or val_loss")
    tune.add_argument("--max-trials", type=_positive_int, default=4, help="trials in the sweep")
    tune.add_argument("--epochs", type=_positive_int, default=2, help="epochs per trial")
    tune.add_argument("--batch-size", type=_positive_int, default=64, help="batch size")
    tune.add_argument("--seed", type=int, default=1, help="seed of the tuner and the data order")
    tune.add_argument("--output", help="sweep directory (default sweeps/<date-time>)")
    tune.add_argument("--resume", action="store_true", help="continue the sweep in --output (finished trials are kept)")
    tune.add_argument("--overwrite", action="store_true", help="replace the sweep in --output")
    tune.add_argument("--chief", metavar="HOST:PORT", help="run keras-tuner's chief oracle, serving on HOST:PORT")
    tune.add_argument("--worker", metavar="HOST:PORT", help="run trials for the chief at HOST:PORT")
    tune.add_argument("--worker-id", help="this worker's unique name (KERASTUNER_TUNER_ID), e.g. tuner0")
    tune.add_argument("--patience", type=_finite_float, default=60.0,
                      help="seconds of silence after which a worker stops, the chief re-queues a worker's trial, "
                           "and a chief with no trial running and no worker ends")
    tune.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0, help="Keras progress")
    tune.set_defaults(run=_tune, check=_check_tune)


def _add_models(sub):
    models = sub.add_parser("models", help="list the registered models (arch.variant)")
    models.add_argument("pattern", nargs="?",
                        help="only names matching this shell-style wildcard (\"wrn*\") or containing this text")
    models.set_defaults(run=_models, tensorflow=False)


def _add_summary(sub):
    summary = sub.add_parser("summary", help="build a registered model and print its layers and parameter count")
    summary.add_argument("model", help="a name from `nestzoo models`, e.g. resnet20.a-resnest")
    summary.add_argument("--classes", type=_positive_int, default=10, help="outputs of the predictor (default 10)")
    summary.set_defaults(run=_summary, check=_check_summary)


def _add_evaluate(sub):
    evaluate = sub.add_parser("evaluate", help="test accuracy of a run's model, a .keras file or a preset on a "
                                               "data set (a preset's: measured beside published)",
                              formatter_class=_HelpFormatter)
    evaluate.add_argument("model", metavar="RUN_DIR_OR_MODEL_OR_PRESET",
                          help="a run directory (runs/<date-time>/resnet20.a-resnest/seed0), a .keras file, or a "
                               "preset: its directory, its URL or arch.variant:dataset[:seed<k>]")
    evaluate.add_argument("--dataset", choices=sorted(DATASETS),
                          help="data set whose test split is used (default: the run's, from its config.json, or "
                               "the preset's; digits for a .keras file outside a run directory)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=128, help="evaluation batch size")
    evaluate.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress")
    _add_data_options(evaluate)
    evaluate.set_defaults(run=_evaluate, check=_check_evaluate)


def _presets(args):
    from nestzoo import presets

    rows = presets.list_presets(args.pattern)
    if not rows and args.pattern:
        raise ValueError(f"no installed preset matches {args.pattern!r}; `nestzoo presets` lists them all")
    print(presets.format_presets(rows))


def _publish(args):
    from nestzoo import presets

    print(f"preset written to {presets.publish(args.run_dir, name=args.name, output=args.output)}")


def _add_presets(sub):
    command = sub.add_parser("presets", help="list the installed presets (trained weights by name) with accuracy, "
                                             "parameters and source")
    command.add_argument("pattern", nargs="?", help="only arch.variant names matching this wildcard or text; "
                                                    "with a '/', arch.variant/dataset-seed<k>")
    command.set_defaults(run=_presets, tensorflow=False)


def _add_publish(sub):
    command = sub.add_parser("publish", help="make a preset from a finished run (like keras-hub's save_to_preset)",
                             formatter_class=_HelpFormatter)
    command.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (model.keras, summary.json)")
    command.add_argument("--name", help="the preset's folder name (default <dataset>-seed<s>)")
    command.add_argument("--output", type=Path, help="folder receiving <arch.variant>/<name>/ (default "
                                                     "$NESTZOO_HOME/presets, NESTZOO_HOME default ~/.nestzoo)")
    command.set_defaults(run=_publish)


def _add_analyze(sub):
    analyze = sub.add_parser(
        "analyze", help="the paper's theory on a saved model: bottleneck condition, Assumption 4, "
                        "Proposition 2's lower bound (R, A, epsilon) and the block-by-block risks",
        formatter_class=_HelpFormatter)
    analyze.add_argument("model", help="a run directory holding model.keras, or a .keras file")
    analyze.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                         help="data set whose training split (unaugmented) the risks are computed on")
    analyze.add_argument("--batch-size", type=_positive_int, default=256, help="batch size of the feature pass")
    analyze.add_argument("--max-iter", type=_positive_int, default=1000,
                         help="L-BFGS iterations per cross-entropy fit (an unconverged fit's risk bounds its optimum above)")
    analyze.set_defaults(run=_analyze)


def _convert(args):
    from nestzoo import convert

    try:
        written = convert.from_reference(args.path, args.output, arch=args.arch, variant=args.variant,
                                         dataset=args.dataset, seed=args.seed)
    except ImportError as error:  # PyTorch missing: the message says what to install
        raise ValueError(str(error)) from error
    print(f"{len(written)} preset{'s' if len(written) != 1 else ''} in "
          f"{written[0].parent.parent if len(written) > 1 else written[0]}")


def _check_convert(args):
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be 0 or more; got {args.seed}")


def _add_convert(sub):
    from nestzoo import convert  # pure data at import (no TensorFlow, no PyTorch)

    command = sub.add_parser(
        "convert", help="convert the reference implementation's trained checkpoints (last_model.pt) into presets",
        description="Read the PyTorch state dicts of the paper's reference implementation (torch.load with "
                    "weights_only=True; needs pip install nestzoo[torch]), map every tensor strictly onto the "
                    "nestzoo model and write each as a preset with its provenance. The arch, variant, data set "
                    f"and seed come from the folder names ({convert.FOLDER_PATTERN}); the flags override them. "
                    "Presets already converted from the same file are skipped.",
        formatter_class=_HelpFormatter)
    command.add_argument("path", metavar="PATH",
                         help="a last_model.pt, a <model>_seed=<s> folder, or the checkpoint/ folder of them")
    command.add_argument("--output", type=Path,
                         help="folder receiving <arch.variant>/<dataset>-seed<s>/ presets "
                              "(default: $NESTZOO_HOME/presets, NESTZOO_HOME default ~/.nestzoo)")
    command.add_argument("--arch", choices=sorted(convert.ARCHS.values()), help="override the folder name's arch")
    command.add_argument("--variant", choices=list(convert.VARIANTS.values()),
                         help="override the folder name's variant")
    command.add_argument("--dataset", choices=sorted(convert.CLASSES), help="override the folder name's data set")
    command.add_argument("--seed", type=int, help="override the folder name's seed (default 0 for a file "
                                                  "outside a reference folder)")
    command.set_defaults(run=_convert, check=_check_convert)


def parser():
    """The argument parser of every ``nestzoo`` subcommand.

    Each subcommand sets `run(args)`, and may set `check(args)`, which validates
    names and values before TensorFlow is imported, and `tensorflow=False`.
    """
    p = argparse.ArgumentParser(
        prog="nestzoo", description="ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.",
        epilog=f"TensorFlow's C++ start-up log is hidden; {TF_LOG_VARIABLE}=1 shows it.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_models, _add_summary, _add_train, _add_tune, _add_evaluate, _add_export, _add_predict,
                _add_analyze, _add_convert, _add_presets, _add_publish):
        add(sub)
    return p


def main(argv=None):
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    try:
        if getattr(args, "check", None):
            args.check(args)
        if getattr(args, "tensorflow", True):
            _start_tensorflow()
        args.run(args)
    except (ValueError, DatasetNotFoundError, FileNotFoundError) as error:  # CheckpointError is a ValueError
        p.exit(2, f"nestzoo {args.command}: error: {error}\n")
    except (training.TrainingDiverged, training.WorkerLost, OSError) as error:  # OSError: CommitError
        p.exit(1, f"nestzoo {args.command}: {error}\n")
    except KeyboardInterrupt:
        p.exit(130, f"\nnestzoo {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
