"""The ``nestzoo`` command: list, summarize, train, evaluate, export models and predict with them."""
import argparse
import sys
import time

from nestzoo import models, registry, specs, training
from nestzoo.data import DATASETS, DatasetNotFoundError


def _models(args):
    for name in registry.list_models(args.pattern):
        print(name)


def _summary(args):
    model = registry.create_model(args.model, classes=args.classes)
    model.summary(line_length=110)


def _model_names(archs, variants):
    """Registry names of archs x variants, accepting the spellings the builders accept."""
    names = []
    for arch in archs:
        family = specs.get_spec(arch).family
        names += [f"{specs.canonical(arch)}.{models.canonical_variant(v, family)}" for v in variants]
    return names


def _print_runs(summaries, output):
    print(f"\n{'model':<28} {'seed':>4} {'params':>10} {'test acc':>9} {'best val':>9} {'s/epoch':>8} {'images/s':>9}")
    for s in summaries:
        print(f"{s['config']['model']:<28} {s['seed']:>4} {s['parameters']:>10,} {100 * s['test_accuracy']:>8.2f}% "
              f"{100 * s['best_val_accuracy']:>8.2f}% {s['seconds_per_epoch']:>8.2f} {s['images_per_second']:>9.0f}")
    print(f"\nruns in {output}/ (model.keras, best.weights.h5, log.csv, summary.json, curves.png, tensorboard/)")


def _fraction_or_count(text):
    """--validation: a fraction of the training set (0.1) or a count of examples (5000)."""
    return int(text) if text.isdigit() else float(text)


def _train(args):
    recipe = training.get_recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                                 learning_rate=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                 milestones=args.milestones, gamma=args.gamma)
    strategy = None
    if args.mirrored:
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
    output = args.output or time.strftime("runs/%Y%m%d-%H%M%S")
    summaries = training.train_seeds(
        _model_names(args.arch, args.variant), args.dataset, args.seeds, output_dir=output, recipe=recipe,
        precision=args.precision, jit_compile=args.jit_compile, strategy=strategy, resume=args.resume,
        validation=args.validation, verbose=args.verbose,
    )
    _print_runs(summaries, output)
    if len(summaries) > 1:
        print("\n" + training.results_markdown(training.results_rows(summaries)))
    print(f"test accuracy: {100 * sum(s['test_accuracy'] for s in summaries) / len(summaries):.2f}%")


def _evaluate(args):
    result = training.evaluate(args.model, args.dataset, batch_size=args.batch_size, verbose=args.verbose)
    print(f"{args.model} on {args.dataset} (test): loss {result['loss']:.4f}, accuracy {100 * result['accuracy']:.2f}%")


def _export(args):
    from nestzoo import export

    directory = export.export(args.model, args.base_dir, name=args.name, version=args.version, dataset=args.dataset,
                              fold_batch_norm=args.fold_batch_norm, jit_compile=args.jit_compile)
    metadata = export.read_metadata(directory)
    inputs = f"{metadata['input']['dtype']} {metadata['input']['name']}"
    print(f"SavedModel written to {directory} (signature serving_default: {inputs} -> "
          f"{', '.join(metadata['outputs'])}; metadata in assets/{export.METADATA_FILE})")


def _predict(args):
    from nestzoo.predict import Predictor, format_rows, read_inputs

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    predictor = Predictor(args.model, dataset=args.dataset)
    names, batch = read_inputs(args.images, predictor, range_check=args.range_check)
    print(format_rows(predictor.top_k(batch, names, args.top_k), as_json=args.json))


def _add_export(sub):
    export = sub.add_parser(
        "export", help="write a run's model as a versioned SavedModel for TensorFlow Serving",
        description="Write saved_models/<name>/<version>/ (TF Serving's layout): signature serving_default takes "
                    "uint8 images (N, H, W, C) as the data set stores them, standardizes them in the graph and "
                    "returns probabilities, class_ids and logits (regressors: predictions); signature "
                    "standardized takes float32 standardized inputs. The export is written beside the target and "
                    "renamed into place; an existing version is never overwritten. See saved_models/README.md.")
    export.add_argument("model", metavar="RUN_DIR_OR_MODEL",
                        help="a run directory (runs/<date-time>/resnet20.a-resnest/seed0; its config.json names "
                             "the data set) or a .keras file")
    export.add_argument("--name", help="model name under --base-dir (default: the registry name, resnet20_a-resnest)")
    export.add_argument("--version", type=int, help="version number (default: the next after the existing ones)")
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
    export.set_defaults(run=_export)


def _add_predict(sub):
    predict = sub.add_parser(
        "predict", help="top-k classes of images from an export or a .keras model",
        description="Run an export (saved_models/<name>/<version>, or saved_models/<name> for its latest version) "
                    "or a .keras model on PNG/JPEG files, folders of them, or .npy arrays (N, H, W, C) of uint8. "
                    "Images of another size are refused, not resized; float arrays and images whose largest "
                    "value is below 32 (another scale, such as scikit-learn's 0..16 digits) are refused.")
    predict.add_argument("model", metavar="EXPORT_OR_KERAS_FILE", help="an export directory or a .keras file")
    predict.add_argument("images", nargs="+", metavar="IMAGES", help="PNG or JPEG files, folders of them, .npy arrays")
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument("--dataset", help="for a .keras file outside a run directory: its data set")
    predict.add_argument("--range-check", action=argparse.BooleanOptionalAction, default=True,
                         help="refuse images whose largest value is below 32 (default on)")
    predict.set_defaults(run=_predict)


def _add_train(sub):
    train = sub.add_parser(
        "train", help="train models with the paper's recipe (appendix B.3), one run per model and seed",
        description="Train arch x variant x seed runs; each run directory holds model.keras, best.weights.h5, "
                    "log.csv, tensorboard/, summary.json and curves.png; results.md/.csv tabulate the mean and "
                    "std of the test accuracy over seeds as the paper's Tables 1 and 2. Unset recipe options "
                    "keep the recipe's values (paper: batch 128, 200 epochs, SGD Nesterov 0.9, coupled weight "
                    "decay 5e-4, lr 0.1 or 0.01 for ResNEsts, x0.2 after epochs 60, 120, 160).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--arch", nargs="+", default=["resnet20"], help="architectures (see `nestzoo models`)")
    train.add_argument("--variant", nargs="+", default=["a-resnest"],
                       help="variants: standard, resnest, bn-resnest, a-resnest, ...")
    train.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="data set (digits needs no download)")
    train.add_argument("--validation", type=_fraction_or_count,
                       help="fraction (0.1) or count (5000) of the training set held out to pick the best "
                       "weights (default: the test set, as the paper)")
    train.add_argument("--recipe", choices=list(training.RECIPES), default="paper", help="paper: appendix B.3; quick: 30 epochs")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    train.add_argument("--lr", type=float, help="initial learning rate (default: 0.1, or 0.01 for ResNEsts)")
    train.add_argument("--momentum", type=float, help="Nesterov momentum")
    train.add_argument("--weight-decay", type=float, help="coupled weight decay (PyTorch's SGD)")
    train.add_argument("--milestones", type=int, nargs="+", help="epochs after which the lr is multiplied by gamma")
    train.add_argument("--gamma", type=float, help="learning-rate factor at each milestone")
    train.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds, one run each (paper: 0 1 2 3 4 5 6)")
    train.add_argument("--precision", choices=training.PRECISIONS, default="auto",
                       help="auto: mixed_float16 on a GPU, float32 on a CPU")
    train.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                       help="XLA compilation (default: on with a GPU, off on a CPU, whichever is faster)")
    train.add_argument("--mirrored", action="store_true", help="train on every local GPU with MirroredStrategy")
    train.add_argument("--output", help="output directory (default runs/<date-time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the runs in --output from their last finished epoch (a new directory "
                            "just starts); without it a directory holding a run is refused")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress: 1 bars, 2 lines")
    train.set_defaults(run=_train)


def parser():
    """The argument parser of every ``nestzoo`` subcommand."""
    p = argparse.ArgumentParser(prog="nestzoo", description="ResNEsts, A-ResNEsts and DenseNEsts for Keras 3.")
    sub = p.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list the registered models (arch.variant)")
    models.add_argument("pattern", nargs="?", help="only names containing this text")
    models.set_defaults(run=_models)
    summary = sub.add_parser("summary", help="build a registered model and print its layers and parameter count")
    summary.add_argument("model", help="a name from `nestzoo models`, e.g. resnet20.a-resnest")
    summary.add_argument("--classes", type=int, default=10, help="outputs of the predictor (default 10)")
    summary.set_defaults(run=_summary)
    _add_train(sub)
    evaluate = sub.add_parser("evaluate", help="test accuracy of a saved .keras model on a data set",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("model", help="a .keras file, e.g. runs/<date-time>/resnet20.a-resnest/seed0/model.keras")
    evaluate.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="data set whose test split is used")
    evaluate.add_argument("--batch-size", type=int, default=128, help="evaluation batch size")
    evaluate.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress")
    evaluate.set_defaults(run=_evaluate)
    _add_export(sub)
    _add_predict(sub)
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, DatasetNotFoundError) as error:
        p.exit(2, f"nestzoo {args.command}: error: {error}\n")
    except training.TrainingDiverged as error:
        p.exit(1, f"nestzoo {args.command}: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
