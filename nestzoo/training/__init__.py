"""Training nestzoo models with the paper's recipe (appendix B.3), TensorFlow only.

    from nestzoo import training
    summary = training.train("resnet20.a-resnest", "cifar10", output_dir="runs/a")   # recipe "paper"
    training.train("resnet20.resnest", "digits", "quick", output_dir="runs/b", epochs=5, resume=True)
    training.train_seeds(["resnet20.standard", "resnet20.a-resnest"], "cifar10", seeds=range(7),
                         output_dir="runs/table1")                                  # results.md / .csv
"""
from nestzoo.training.experiments import evaluate, train_seeds
from nestzoo.recipe import RECIPES, CoupledSGD, MultiStepSchedule, Recipe, get_recipe
from nestzoo.training.report import results_markdown, results_rows, write_results
from nestzoo.training.checkpoint import CheckpointError, CommitError
from nestzoo.training.run import TrainingDiverged, TrainingInterrupted, explosion_bound, load_model, train
from nestzoo.training.runtime import PRECISIONS, resolve_jit_compile, resolve_precision

__all__ = [
    "CheckpointError",
    "CommitError",
    "PRECISIONS",
    "RECIPES",
    "CoupledSGD",
    "MultiStepSchedule",
    "Recipe",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate",
    "explosion_bound",
    "load_model",
    "get_recipe",
    "resolve_jit_compile",
    "resolve_precision",
    "results_markdown",
    "results_rows",
    "train",
    "train_seeds",
    "write_results",
]
