"""keras-tuner sweeps of the expansion width M that honour the bottleneck condition (Section 3.2).

    from nestzoo import tuning
    space = tuning.WidthSpace(inputs="image", blocks=(1, 1, 1), width=(4, 32), features=(2, 4, 8))
    sweep = tuning.run_sweep(space, "digits", "sweeps/w", tuner="bayesian", max_trials=8, epochs=2)
    print(sweep.markdown)          # also sweeps/w/report.csv, report.md, score_vs_width.png, best_model.keras

    # or keras-tuner as its docs teach, with any data model.fit takes:
    hypermodel = tuning.WidthHyperModel(space, input_shape=(8, 8, 1), classes=10)
    keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=2).search(x, y, validation_split=0.2)

The user fixes the variant, the inputs (``"image"``: stages of residual blocks;
``"vector"``: ``arch="mlp"``), the depths and the block type; the search covers M (one
M with fixed stage ``ratios``, or one range per stage), and K and the learning rate
when ranges are given for them.

The package, one concern a module: ``space`` (what is searched; no TensorFlow),
``solver`` (each M range raised to where the condition holds, before any trial),
``hypermodel`` (`WidthHyperModel`), ``tuners`` (keras-tuner's tuners and oracles,
subclassed: atomic state, a damaged sweep refused on reload), ``distributed`` (the
chief/worker watchdog), ``report`` (report files and plot), ``sweep`` (`run_sweep`),
and ``_keras_tuner``, the only module using keras-tuner's private API.

**Resumable.** Started again on the same directory with ``resume=True``, keras-tuner
reloads the sweep: finished trials are kept, the interrupted one re-runs. **Repeatable.**
The same seed gives the same trials and the same scores on one machine.
"""
from nestzoo._lazy import attach

_ATTRIBUTES = {
    "nestzoo.tuning.space": ("INPUTS", "OBJECTIVES", "WidthSpace"),
    "nestzoo.tuning.solver": ("width_bounds",),
    "nestzoo.tuning.hypermodel": ("WidthHyperModel", "epoch_steps"),
    "nestzoo.tuning.tuners": ("BayesianOptimization", "Hyperband", "RandomSearch", "TUNERS"),
    "nestzoo.tuning.cluster": ("role",),
    "nestzoo.tuning.report": ("Sweep", "plot", "report_rows", "write_report"),
    "nestzoo.tuning.sweep": ("EVENTS_FILE", "PROJECT", "SPACE_FILE", "run_sweep"),
}
__getattr__, __dir__, __all__ = attach(globals(), _ATTRIBUTES)
