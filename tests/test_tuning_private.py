"""keras-tuner's private API that nestzoo.tuning._keras_tuner uses: pinned, present, and the only way
keras-tuner writes the state a resume reads."""
import configparser
import inspect
import re
from pathlib import Path

import keras
import keras_tuner
import numpy as np
from packaging.version import Version

from nestzoo.tuning import _keras_tuner, tuners

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_keras_tuner_is_the_pinned_one():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    low, high = re.search(r"keras-tuner>=([\d.]+),<([\d.]+)", config["options"]["install_requires"]).groups()
    assert Version(low) <= Version(keras_tuner.__version__) < Version(high)


def test_the_private_names_exist_with_the_arguments_used():
    classes = {"keras_tuner.Oracle": keras_tuner.Oracle, "keras_tuner.Tuner": keras_tuner.Tuner}
    arguments = {"_get_trial_dir": ["self", "trial_id"], "_save_trial": ["self", "trial"],
                 "_get_checkpoint_fname": ["self", "trial_id"]}
    for owner, names in _keras_tuner.USED.items():
        for name in names:
            method = getattr(classes[owner], name)
            assert list(inspect.signature(method).parameters) == arguments.get(name, ["self"]), (owner, name)
    oracle = keras_tuner.oracles.RandomSearchOracle(objective="val_loss", max_trials=1)
    assert vars(oracle)["_retry_queue"] == [] and "self._retry_queue.append(" in inspect.getsource(type(oracle).reload)
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_client

    assert "self.stub = " in inspect.getsource(oracle_client.OracleClient.__init__)
    service = protos.get_service()
    assert service.GetTrialRequest(trial_id="0").trial_id == "0" and service.GetSpaceRequest() is not None


def _build(hp):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(hp.Int("units", 1, 4)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_every_state_file_a_resume_reads_is_written_by_nestzoo(tmp_path, monkeypatch):
    """keras-tuner's own in-place writer is left only build_config.json, written before its trial completes
    (a kill there re-runs the trial)."""
    from keras_tuner.src import utils

    written, save_json = [], utils.save_json
    monkeypatch.setattr(utils, "save_json", lambda path, obj: written.append(Path(path).name) or save_json(path, obj))
    x = np.zeros((8, 3), "float32")
    tuner = tuners.RandomSearch(_build, objective="val_loss", max_trials=2, directory=tmp_path, project_name="p")
    tuner.search(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=1, verbose=0)
    assert set(written) <= {"build_config.json"}
    project = tmp_path / "p"
    assert (project / "oracle.json").exists() and (project / "tuner0.json").exists()
    assert len(list(project.glob("trial_*/trial.json"))) == 2
    assert all((p.parent / tuners.DIGEST).exists() for p in project.glob("trial_*/checkpoint.weights.h5"))
