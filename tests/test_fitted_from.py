"""``train.fitted_from``: a fit made once (BEiT's tokenizer, colorization's rebalancing
weights) read back from an earlier run's ``fitted/`` artifact or file, checked against the
configured method before Ray starts, and adopted in place of a new fit. A Ray Train run that
takes its tokenizer from another run is in test_pretrain_e2e (slow)."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_methods import batch_for, small_config

from ssl_ray.config import ConfigError
from ssl_ray.tracking.fitted import FittedSourceError, fitted_file, load_fitted
from ssl_ray.train.build import build_method
from ssl_ray.train.refit import adopt_fitted
from ssl_ray.train.trainer import read_fitted_from


def _fitted_from(config, source):
    return config.model_copy(update={"train": config.train.model_copy(update={"fitted_from": str(source)})})


def _beit_fit(config, seed=0) -> dict[str, torch.Tensor]:
    """What a BEiT run of ``config`` logs before epoch 1: its buffers after a real fit."""
    method = build_method(config)
    images = batch_for(method, seed=seed).views[0]
    method.fit_targets(method.target_features(images), seed)
    return {name: getattr(method, name).clone() for name in method.fitted_buffers}


def _logged_run(tracking_uri, tmp_path, files: dict[str, dict]) -> str:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("fitted-from") or client.get_experiment(
        client.create_experiment("fitted-from")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    for name, state in files.items():
        path = tmp_path / name
        torch.save(state, path)
        client.log_artifact(run_id, str(path), "fitted")
    client.set_terminated(run_id)
    return run_id


def test_a_runs_first_fit_is_read_back_by_its_run_id(tmp_path, mlflow_server):
    config = small_config("beit", tmp_path)
    first, later = _beit_fit(config, seed=0), _beit_fit(config, seed=1)
    # A run that refitted later too: the first fit is the one a fit-once method made.
    run_id = _logged_run(mlflow_server, tmp_path, {fitted_file("beit", 1): first, fitted_file("beit", 3): later})
    read = load_fitted(run_id, "beit", mlflow_server)
    assert sorted(read) == ["code_counts", "codebook"]
    assert torch.equal(read["codebook"], first["codebook"]) and not torch.equal(read["codebook"], later["codebook"])


def test_what_cannot_give_a_fit_is_named(tmp_path, mlflow_server):
    other = _logged_run(mlflow_server, tmp_path, {fitted_file("colorization", 1): {"rebalancing": torch.ones(3)}})
    with pytest.raises(FittedSourceError, match=f"MLflow run {other} logged no fitted/beit_before_epoch_1.pt"):
        load_fitted(other, "beit", mlflow_server)
    with pytest.raises(FittedSourceError, match=f"no MLflow run {'0' * 32} at {mlflow_server}"):
        load_fitted("0" * 32, "beit", mlflow_server)
    with pytest.raises(FittedSourceError, match="neither an MLflow run id"):
        load_fitted("last-week", "beit", mlflow_server)
    with pytest.raises(FittedSourceError, match="is not a file"):
        load_fitted(str(tmp_path / "absent.pt"), "beit", mlflow_server)
    (tmp_path / "torn.pt").write_bytes(b"not a torch file")
    with pytest.raises(FittedSourceError, match="torn.pt could not be read as a fit"):
        load_fitted(str(tmp_path / "torn.pt"), "beit", mlflow_server)


def test_the_fit_must_be_the_configured_methods_before_ray_starts(tmp_path):
    config = small_config("beit", tmp_path)
    path = tmp_path / "tokenizer.pt"
    torch.save(_beit_fit(config), path)
    given = read_fitted_from(_fitted_from(config, path), "unused://")
    assert sorted(given) == ["code_counts", "codebook"]
    # Another vocabulary (or patch size, or channels) is another tokenizer: refused, named.
    smaller = _fitted_from(small_config("beit", tmp_path, vocabulary_size=8), path)
    with pytest.raises(ConfigError, match=r"train.fitted_from: codebook is \(\d+, \d+\) in .* and \(8, \d+\) here"):
        read_fitted_from(smaller, "unused://")
    torch.save({"codebook": given["codebook"]}, tmp_path / "half.pt")
    with pytest.raises(ConfigError, match="half.pt holds no code_counts"):
        read_fitted_from(_fitted_from(config, tmp_path / "half.pt"), "unused://")
    # A method that fits nothing once (SimCLR), or fits again each epoch (DeepCluster).
    for name in ("simclr", "deepcluster"):
        with pytest.raises(ConfigError, match=f"train.fitted_from: method {name} fits nothing once"):
            read_fitted_from(_fitted_from(small_config(name, tmp_path), path), "unused://")
    with pytest.raises(ConfigError, match="train.fitted_from: .*is neither an MLflow run id"):
        read_fitted_from(_fitted_from(config, "yesterday"), "unused://")


@pytest.mark.parametrize("name", ["beit", "colorization"])
def test_an_adopted_fit_is_the_methods_targets_and_no_fit_is_due(tmp_path, name):
    config = small_config(name, tmp_path)
    donor = build_method(config)
    images = batch_for(donor).views[0]
    donor.fit_targets(donor.target_features(images), 0)
    donor.adopt_targets(0, *(torch.empty(0, dtype=torch.long),) * 3)
    state = {buffer: getattr(donor, buffer).clone() for buffer in donor.fitted_buffers}

    method = build_method(config)
    assert method.targets_due(0)
    metrics = adopt_fitted(method, state, 0)
    assert not method.targets_due(0) and not method.targets_due(5)
    for buffer in method.fitted_buffers:
        assert torch.equal(getattr(method, buffer), getattr(donor, buffer))
    # The same metrics as the fit that made it said.
    assert metrics == donor.adopt_targets(0, *(torch.empty(0, dtype=torch.long),) * 3)
