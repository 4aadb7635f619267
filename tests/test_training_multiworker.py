"""`--strategy multi-worker`: TF_CONFIG checked before TensorFlow.

The upstream blocker (keras-team/keras#20585) is reproduced by
``python -m nestzoo.training.multiworker`` (two workers on 127.0.0.1, about 30 s of two
processes), kept out of the timed suite.
"""
import json

import pytest

from nestzoo.training import multiworker

GOOD = {"cluster": {"chief": ["127.0.0.1:2000"], "worker": ["127.0.0.1:2001"]}, "task": {"type": "worker", "index": 0}}


@pytest.mark.parametrize("text, message", [
    ("", "TF_CONFIG, which is not set"),
    ("{cluster: 1}", "TF_CONFIG does not parse as JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "\"cluster\" must map chief and/or worker"),
    (json.dumps({"cluster": {"ps": ["h:1"]}, "task": {}}), "\"cluster\" must map chief and/or worker"),
    (json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}),
     "cluster['worker'] must be a non-empty list of HOST:PORT"),
    (json.dumps({"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}), "2 chiefs"),
    (json.dumps({**GOOD, "task": {"type": "evaluator", "index": 0}}), "one of ['chief', 'worker']"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 1}}), "task index must be 0..0 for 'worker', got 1"),
])
def test_a_bad_tf_config_is_refused_naming_the_problem(text, message):
    with pytest.raises(ValueError) as error:
        multiworker.read_tf_config(text)
    assert message in str(error.value)


def test_a_good_tf_config_parses():
    assert multiworker.read_tf_config(json.dumps(GOOD)) == GOOD


def test_the_cli_checks_tf_config_before_tensorflow(nestzoo_cli, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    code, out = nestzoo_cli("train", "--strategy", "multi-worker")
    assert code == 2 and "TF_CONFIG does not parse as JSON" in out
    monkeypatch.setenv("TF_CONFIG", json.dumps(GOOD))
    code, out = nestzoo_cli("train", "--strategy", "multi-worker", "--output", "x", "--chief", "127.0.0.1:1")
    assert code == 2 and "give one or the other" in out
    monkeypatch.setattr("nestzoo.cli._start_tensorflow", lambda: None)
    code, out = nestzoo_cli("train", "--strategy", "multi-worker", "--epochs", "1")
    assert code == 2 and "--strategy multi-worker is not available" in out and "keras/issues/20585" in out
