from pathlib import Path

from ssl_ray.tracking.mlflow_run import resolve_tracking_uri, ui_command
from ssl_ray.train.storage import latest_run_name, normalise_storage_path


def test_latest_run_name_picks_newest_of_the_prefix(tmp_path):
    for name in [
        "simclr-fm-20261101-101010",
        "simclr-fm-20261125-090000",
        "simclr-fm-x-20261130-000000",
        "other-20261231-000000",
    ]:
        (tmp_path / name).mkdir()
    (tmp_path / "simclr-fm-20261201-000000").write_text("a file, not a run")
    assert latest_run_name(str(tmp_path), "simclr-fm") == "simclr-fm-20261125-090000"
    assert latest_run_name(str(tmp_path), "nothing") is None
    assert latest_run_name(str(tmp_path / "missing"), "simclr-fm") is None


def test_storage_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_storage_path("ray_results") == str(tmp_path / "ray_results")
    assert normalise_storage_path("s3://bucket/prefix") == "s3://bucket/prefix"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///runs.db") == f"sqlite:///{tmp_path}/runs.db"
    assert resolve_tracking_uri("mlruns") == Path(tmp_path / "mlruns").as_uri()
    assert "--backend-store-uri sqlite:///" in ui_command(f"sqlite:///{tmp_path}/mlflow.db")
    assert "127.0.0.1" in ui_command(f"sqlite:///{tmp_path}/mlflow.db")
    assert ui_command("http://127.0.0.1:5000/", "3", "abc") == "open http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert ui_command(f"sqlite:///{tmp_path}/m.db", "1", "r").endswith(
        "open http://127.0.0.1:5000/#/experiments/1/runs/r"
    )
