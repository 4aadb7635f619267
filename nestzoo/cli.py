"""The ``nestzoo`` command."""
import argparse

from nestzoo import registry


def _models(args):
    for name in registry.list_models(args.pattern):
        print(name)


def _summary(args):
    model = registry.create_model(args.model, classes=args.classes)
    model.summary(line_length=110)


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
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
