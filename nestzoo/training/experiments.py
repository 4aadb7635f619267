"""Several runs at once: models x seeds, summarized as the paper's Tables 1 and 2; and testing a saved model
or a preset."""
from pathlib import Path

import keras
import tensorflow as tf

from nestzoo.data import splits
from nestzoo.saving import load_model
from nestzoo.specs import positive_int
from nestzoo.training import folder, multiworker, report
from nestzoo.training.run import check_fits, loss_for, train


def train_seeds(models, data="digits", seeds=range(7), *, output_dir, **kwargs):
    """Train every model (registry names or builders) with every seed; write results.md and results.csv.

    Runs go to ``output_dir/{name}/seed{seed}``, name being the registry name or the
    builder's ``__name__``; `kwargs` are those of `train`.
    The paper reports the mean test accuracy of seeds 0..6. results.md and results.csv
    tabulate every finished run under `output_dir`, those of earlier calls included.
    Returns the summaries of this call's runs (None for each on a multi-worker run's non-chief worker).
    """
    models = [models] if isinstance(models, str) or callable(models) else list(models)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed (the paper used 0..6)")
    if not models or not all(isinstance(m, str) or callable(m) and not isinstance(m, keras.Model) for m in models):
        raise ValueError("models must be a non-empty list of registry names (see nestzoo.list_models()) or "
                         f"functions returning a fresh keras.Model, got {models!r}")
    writes = multiworker.writes_files(kwargs.get("strategy"))  # not a multi-worker run's non-chief worker
    if writes:
        folder.check_output_dir(output_dir)
    summaries = [
        train(model, data, seed=seed, output_dir=Path(output_dir, getattr(model, "__name__", model), f"seed{seed}"),
              **kwargs)
        for model in models
        for seed in seeds
    ]
    if writes:
        report.write_results(None, output_dir)  # every finished run in output_dir, earlier ones included
    return summaries


def evaluate(model, data="digits", *, batch_size=128, verbose="auto", **load_options):
    """Test loss and accuracy of a model (or a saved .keras file) on a data set's test split.

    data: what ``nestzoo.data.splits`` takes (its test split is used; a name's is not
    augmented), or one batched tf.data dataset. load_options go to ``nestzoo.data.load``
    with a name (source=, data_dir=, download=). A file that is missing, not a .keras
    archive, or holds non-finite weights is refused by name, and data that does not fit
    the model (its input shape or classes) is refused naming both.
    """
    positive_int("batch_size", batch_size)
    if not isinstance(model, keras.Model):
        model = load_model(model)
    if not model.compiled:
        model.compile(loss=loss_for(model), metrics=["accuracy"])
    if isinstance(data, tf.data.Dataset):
        test = data
    else:
        given = splits(data, batch_size, augment=False, **load_options)
        check_fits(model, given)
        test = given.test
    loss, accuracy = model.evaluate(test, verbose=verbose)
    return {"loss": float(loss), "accuracy": float(accuracy)}


def evaluate_preset(preset, data=None, *, batch_size=128, verbose="auto", **load_options):
    """Test accuracy of a preset (`nestzoo.presets.load_preset`: a directory, a URL or
    "arch.variant:dataset[:seed<k>]") on its data set, beside the published accuracy.

    data: default the preset's data set (metadata "dataset"); anything `evaluate` takes.
    Returns {"loss", "accuracy" (fraction), "measured_accuracy" (percent),
    "published_accuracy" (percent or None: the paper's table cell for a converted
    reference model), "test_accuracy" (percent the preset records, or None), "dataset", "preset"}.
    """
    from nestzoo import presets

    directory = presets.find(preset)
    model = presets.load_preset(directory)
    _, metadata = presets.read_preset(directory, verify=False)
    data = metadata["dataset"] if data is None else data
    result = evaluate(model, data, batch_size=batch_size, verbose=verbose, **load_options)
    return {**result, "measured_accuracy": 100 * result["accuracy"], "dataset": data if isinstance(data, str) else None,
            "published_accuracy": metadata.get("published_accuracy"), "test_accuracy": metadata.get("test_accuracy"),
            "preset": str(directory)}
