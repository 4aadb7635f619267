"""Training nestzoo models with the paper's recipe (appendix B.3), TensorFlow only.

    from nestzoo import training
    summary = training.train("resnet20.a-resnest", "cifar10", output_dir="runs/a")   # recipe "paper"
    training.train("resnet20.resnest", "digits", "quick", output_dir="runs/b", epochs=5, resume=True)
    training.train_seeds(["resnet20.standard", "resnet20.a-resnest"], "cifar10", seeds=range(7),
                         output_dir="runs/table1")                                  # results.md / .csv
    training.evaluate("runs/a/model.keras", "cifar10")                             # {"loss", "accuracy"}

Modules: ``run`` (`train`, in four steps), ``callbacks`` (the divergence guard, the epoch
commits), ``checkpoint`` (commit records, folder claims, JSON reading), ``folder`` (the run
directory's checks and final files), ``grid`` (a table's runs over workers), ``multiworker``
(one run across workers), ``runtime`` (precision, XLA, the setup that
exactness depends on), ``report`` (logs, curves, tables), ``experiments`` (seeds, evaluate).
The data comes through ``nestzoo.data.splits``.

The attributes are imported on first use (PEP 562), so the ``nestzoo`` command reads
the recipe and precision names without importing TensorFlow.
"""
from nestzoo._lazy import attach

_ATTRIBUTES = {
    "nestzoo.training.experiments": ("evaluate", "train_seeds"),
    "nestzoo.optimizers": ("CoupledSGD", "MultiStepSchedule"),
    "nestzoo.recipe": ("RECIPES", "Recipe", "get_recipe"),
    "nestzoo.saving": ("load_model",),
    "nestzoo.training.callbacks": ("TrainingDiverged", "explosion_bound"),
    "nestzoo.training.checkpoint": ("CheckpointError", "CommitError", "FolderInUse", "claim"),
    "nestzoo.training.folder": ("InexactResume",),
    "nestzoo.training.grid": ("run_grid",),
    "nestzoo.training.multiworker": ("WorkerLost",),
    "nestzoo.training.report": ("results_markdown", "results_rows", "write_results"),
    "nestzoo.training.run": ("TrainingInterrupted", "train"),
    "nestzoo.training.runtime": ("PRECISIONS", "resolve_jit_compile", "resolve_precision"),
}
__getattr__, __dir__, __all__ = attach(globals(), _ATTRIBUTES)
