"""Training nestzoo models with the paper's recipe (appendix B.3), TensorFlow only.

    from nestzoo import training
    summary = training.train("resnet20.a-resnest", "cifar10", output_dir="runs/a")   # recipe "paper"
    training.train("resnet20.resnest", "digits", "quick", output_dir="runs/b", epochs=5, resume=True)
    training.train_seeds(["resnet20.standard", "resnet20.a-resnest"], "cifar10", seeds=range(7),
                         output_dir="runs/table1")                                  # results.md / .csv

The attributes are imported on first use (PEP 562), so the ``nestzoo`` command reads
the recipe and precision names without importing TensorFlow.
"""
from nestzoo._lazy import attach

_ATTRIBUTES = {
    "nestzoo.training.experiments": ("evaluate", "train_seeds"),
    "nestzoo.optimizers": ("CoupledSGD", "MultiStepSchedule"),
    "nestzoo.recipe": ("RECIPES", "Recipe", "get_recipe"),
    "nestzoo.training.checkpoint": ("CheckpointError", "CommitError"),
    "nestzoo.training.report": ("results_markdown", "results_rows", "write_results"),
    "nestzoo.training.run": ("TrainingDiverged", "TrainingInterrupted", "explosion_bound", "load_model", "train"),
    "nestzoo.training.runtime": ("PRECISIONS", "resolve_jit_compile", "resolve_precision"),
}
__getattr__, __dir__, __all__ = attach(globals(), _ATTRIBUTES)
