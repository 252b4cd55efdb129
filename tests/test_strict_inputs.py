"""Strict inputs: a bool is not a number anywhere, a YAML error is one line with its place, an
unknown field lists what the section has, a bad flag is named, and --resume of a run that is
not there says so where it looked. All through ``ssl_ray.cli.main`` as a user calls it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_ray.cli import main
from ssl_ray.config import ConfigError, load_config
from ssl_ray.tune.space import SpaceError, load_space

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "pipelines" / "simclr_fashion_mnist.yaml")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_RAY_FASHION_MNIST", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=true", "train.epochs"),
        ("optim.base_lr=false", "optim.base_lr"),
        ("augment.crop_scale=[true,1.0]", "augment.crop_scale"),
        ("method.temperature=true", "method.temperature"),
        ("eval.knn_k=yes", "eval.knn_k"),  # YAML 1.1: yes is true
    ],
)
def test_a_bool_is_not_a_number(data_dir, override, field):
    with pytest.raises(ConfigError, match=rf"{field}: expected (a number|numbers), not (a boolean|booleans)"):
        load_config(DEMO, [override])


def test_bools_stay_bools_where_a_field_takes_one(data_dir):
    config = load_config(DEMO, ["train.compile=true", "train.use_gpu=false", "eval.knn_at_init=false"])
    assert config.train.compile is True and config.train.use_gpu is False


def test_a_bool_in_a_search_space_is_refused(data_dir, tmp_path):
    from ssl_ray.config import load_raw

    raw = load_raw(DEMO)
    for entry in ("train.epochs: {choice: [true, 2]}", "method.temperature: {uniform: [true, 0.5]}"):
        (tmp_path / "space.yaml").write_text(entry + "\n")
        with pytest.raises(SpaceError):
            load_space(tmp_path / "space.yaml", raw)


def test_yaml_errors_name_the_file_or_override_line_and_column(data_dir, tmp_path, capsys):
    err = one_line_error(capsys, "pretrain", DEMO, "augment.crop_scale=[0.3,")
    assert err.startswith("ssl-ray: override 'augment.crop_scale=[0.3,': not valid YAML (line 1, column")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method:\n  name: simclr\n  temperature: [0.1,\ntrain:\n  epochs: 3\n")
    assert one_line_error(capsys, "pretrain", str(broken)).startswith(
        f"ssl-ray: {broken}: not valid YAML at line 5, column"
    )
    space = tmp_path / "space.yaml"
    space.write_text("method.temperature: {choice: [0.1, }\n")
    err = one_line_error(capsys, "sweep", DEMO, "--space", str(space))
    assert err.startswith(f"ssl-ray: {space}: not valid YAML at line 1, column")


def test_unknown_fields_list_the_sections_fields(data_dir, capsys):
    err = one_line_error(capsys, "pretrain", DEMO, "train.epoch=3")
    assert "train.epoch: unknown field; train's fields: epochs, batch_size," in err
    err = one_line_error(capsys, "pretrain", DEMO, "trian.epochs=3")
    assert "trian: unknown section; the sections: method, data, augment," in err


def test_a_bad_sweep_option_names_its_flag(data_dir, capsys):
    err = one_line_error(
        capsys, "sweep", DEMO, "--space", str(ROOT / "tune_spaces" / "simclr.yaml"), "--num-samples", "0"
    )
    assert err == "ssl-ray: --num-samples: Input should be greater than 0 (got 0)"


def test_resume_of_a_run_that_is_not_there_says_where_it_looked(data_dir, capsys):
    err = one_line_error(capsys, "pretrain", DEMO, "--resume", "no-such-run")
    assert err.startswith("ssl-ray: nothing to resume: no run no-such-run under ") and "mlflow" not in err.lower()
    assert not (data_dir / "mlflow.db").exists()
