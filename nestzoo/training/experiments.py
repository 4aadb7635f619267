"""Several runs at once: models x seeds, summarized as the paper's Tables 1 and 2."""
from pathlib import Path

import keras

from nestzoo import optimizers  # noqa: F401  (registers CoupledSGD and MultiStepSchedule for load_model)
from nestzoo.training import report
from nestzoo.training.run import check_output_dir, load_model, loss_for, train


def train_seeds(models, data="digits", seeds=range(7), *, output_dir, **kwargs):
    """Train every model (registry names or builders) with every seed; write results.md and results.csv.

    Runs go to ``output_dir/{name}/seed{seed}``, name being the registry name or the
    builder's ``__name__``; `kwargs` are those of `train`.
    The paper reports the mean test accuracy of seeds 0..6. results.md and results.csv
    tabulate every finished run under `output_dir`, those of earlier calls included.
    Returns the summaries of this call's runs.
    """
    models = [models] if isinstance(models, str) or callable(models) else list(models)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed (the paper used 0..6)")
    if not models or not all(isinstance(m, str) or callable(m) and not isinstance(m, keras.Model) for m in models):
        raise ValueError("models must be a non-empty list of registry names (see nestzoo.list_models()) or "
                         f"functions returning a fresh keras.Model, got {models!r}")
    check_output_dir(output_dir)
    summaries = [
        train(model, data, seed=seed, output_dir=Path(output_dir, getattr(model, "__name__", model), f"seed{seed}"),
              **kwargs)
        for model in models
        for seed in seeds
    ]
    report.write_results(None, output_dir)  # every finished run in output_dir, earlier ones included
    return summaries


def evaluate(model, data="digits", *, batch_size=128, verbose="auto"):
    """Test loss and accuracy of a model (or a saved .keras file) on a data set's test split.

    data: a data set name, a `nestzoo.data.Datasets` (its test split) or a batched tf.data set.
    A file that is missing, not a .keras archive, or holds non-finite weights is refused by name.
    """
    from nestzoo import data as nestzoo_data

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(model, keras.Model):
        model = load_model(model)
    if not model.compiled:
        model.compile(loss=loss_for(model), metrics=["accuracy"])
    if isinstance(data, str):
        data = nestzoo_data.load(data, batch_size, augment=False)
    test = data.test if isinstance(data, nestzoo_data.Datasets) else data
    loss, accuracy = model.evaluate(test, verbose=verbose)
    return {"loss": float(loss), "accuracy": float(accuracy)}
