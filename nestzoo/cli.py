"""The ``nestzoo`` command: list, summarize, train, evaluate and export models."""
import argparse
import sys
import time

from nestzoo import registry, training
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
    from nestzoo.export import export_saved_model

    directory = export_saved_model(args.model, args.output, dataset=args.dataset, overwrite=args.overwrite)
    print(f"SavedModel written to {directory} (endpoint serve, signature serving_default)")


def _analyze(args):
    """The theory report of a saved model (nestzoo.theory): condition, Assumption 4, R, A, epsilon, block risks."""
    import dataclasses
    import json
    import os

    import keras

    from nestzoo import builders, theory  # noqa: F401  (builders registers nestzoo's objects for loading)

    path = os.path.join(args.model, "model.keras") if os.path.isdir(args.model) else args.model
    if not os.path.isfile(path):
        raise ValueError(f"{args.model!r} is neither a .keras file nor a run directory holding model.keras")
    model = keras.saving.load_model(path)
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
    export = sub.add_parser("export", help="write a saved .keras model as a SavedModel for TensorFlow Serving")
    export.add_argument("model", help="a .keras file, e.g. runs/<date-time>/resnet20.a-resnest/seed0/model.keras")
    export.add_argument("output", help="the SavedModel directory, e.g. saved_models/resnet20_a-resnest/1")
    export.add_argument("--dataset", choices=sorted(DATASETS),
                        help="build in this data set's standardization, so the endpoint takes uint8 images")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    export.set_defaults(run=_export)
    analyze = sub.add_parser(
        "analyze", help="the paper's theory on a saved model: bottleneck condition, Assumption 4, "
                        "Proposition 2's lower bound (R, A, epsilon) and the block-by-block risks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    analyze.add_argument("model", help="a run directory holding model.keras, or a .keras file")
    analyze.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                         help="data set whose training split (unaugmented) the risks are computed on")
    analyze.add_argument("--batch-size", type=int, default=256, help="batch size of the feature pass")
    analyze.add_argument("--max-iter", type=int, default=1000,
                         help="L-BFGS iterations per cross-entropy fit (an unconverged fit's risk bounds its optimum above)")
    analyze.set_defaults(run=_analyze)
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
