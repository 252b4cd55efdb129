import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ssl_ray.config import ConfigError, load_config, load_raw

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pipelines" / "simclr_fashion_mnist.yaml"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_RAY_FASHION_MNIST", str(tmp_path))
    return tmp_path


def test_pipelines_load_and_overrides_apply(data_dir):
    config = load_config(DEMO, ["train.epochs=3", "augment.crop_scale=[0.3, 1.0]", "method.temperature=0.5"])
    assert config.train.epochs == 3
    assert config.augment.crop_scale == (0.3, 1.0)
    assert config.method.temperature == 0.5
    assert config.flat()["model.width"] == 32
    full = load_config(ROOT / "pipelines" / "simclr_fashion_mnist_full.yaml")
    assert full.model.width == 64 and full.train.epochs == 200 and full.optim.name == "lars"


def test_config_is_frozen(data_dir):
    config = load_config(DEMO)
    with pytest.raises(ValidationError, match="frozen"):
        config.train.epochs = 5


@pytest.mark.parametrize(
    "override, field",
    [
        ("method.temperature=-0.1", "method.temperature"),
        ("method.name=simclrr", "method.name"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.path=/no/such/dir", "data.path"),
        ("augment.crop_scale=[0.9, 0.2]", "augment.crop_scale"),
        ("train.epochs=many", "train.epochs"),
        ("optim.lr=0.1", "optim.lr"),  # unknown field (it is optim.base_lr)
        ("train.batch_size=255", "train.batch_size"),  # with 2 workers: not divisible
        ("augment.blur_p=[1.0, 1.5]", "augment.blur_p"),
        ("augment.solarize_p=[0.1, 0.2, 0.3]", "augment.solarize_p"),  # one per view, two views
        ("method.queue_size=4096", "method.queue_size"),  # MoCo's, not SimCLR's: unknown for simclr
        ("augment.local_crops=4", "augment.local_crops"),  # SimCLR takes two views
        ("augment.global_crops=3", "augment.global_crops"),
    ],
)
def test_invalid_values_name_the_field(data_dir, override, field):
    extra = ["train.num_workers=2"] if override == "train.batch_size=255" else []
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(DEMO, [override, *extra])


def test_method_fields_are_the_methods_own(data_dir):
    """Each method validates its own fields, with its paper's defaults; another method's field
    is named as unknown, with the fields that method does take."""
    moco = load_config(DEMO, ["method.name=moco_v1", "method.queue_size=4096"]).method
    assert (moco.queue_size, moco.temperature) == (4096, 0.2)  # the demo file sets 0.2
    with pytest.raises(ConfigError, match=r"method\.queue_size: unknown field for simclr \(its fields: temperature"):
        load_config(DEMO, ["method.queue_size=4096"])
    with pytest.raises(ConfigError, match=r"method\.queue_size: Input should be greater than 0"):
        load_config(DEMO, ["method.name=moco_v2", "method.queue_size=0"])
    assert set(load_config(DEMO).flat()) >= {"method.name", "method.temperature", "method.projection_dim"}
    assert "method.queue_size" not in load_config(DEMO).flat()


def test_local_crops_must_be_smaller(data_dir):
    with pytest.raises(ConfigError, match=r"augment\.local_image_size \(28\) must be below augment\.image_size"):
        load_config(DEMO, ["augment.local_crops=2", "augment.local_image_size=28"])


def test_a_model_name_without_a_model_is_refused(data_dir):
    assert not load_config(DEMO, ["tracking.register_model=false"]).tracking.register_model
    with pytest.raises(ConfigError, match=r"^invalid config: tracking\.registered_model \('mine'\) names a model"):
        load_config(DEMO, ["tracking.register_model=false", "tracking.registered_model=mine"])


def test_unknown_method_lists_known_ones(data_dir):
    with pytest.raises(ConfigError, match="known: .*simclr"):
        load_config(DEMO, ["method.name=nope"])


def test_malformed_override_is_rejected(data_dir):
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(DEMO, ["epochs"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("method.temperature=-1", "method.temperature"),
        ("method.name=unknown", "method.name"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.path=/missing/fashion", "data.path"),
    ],
)
def test_cli_exits_nonzero_naming_the_field_before_ray_starts(data_dir, override, field):
    done = subprocess.run(
        [sys.executable, "-m", "ssl_ray.cli", "pretrain", str(DEMO), override],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=data_dir,
    )
    assert done.returncode == 2
    assert field in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert not (data_dir / "mlflow.db").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_pipeline_file_loads(data_dir, path):
    overrides = []
    if "openclipart" in path.name:
        # Where scripts/get_openclipart.sh writes the shards; here, folders that exist.
        raw = load_raw(path)
        assert (raw["data"]["path"], raw["data"]["val_path"]) == tuple(
            f"~/.cache/ssl-ray/openclipart-64/{side}" for side in ("train", "test")
        )
        assert 'dst="${HOME}/.cache/ssl-ray/openclipart-64"' in (ROOT / "scripts" / "get_openclipart.sh").read_text()
        overrides = [f"data.path={data_dir}", f"data.val_path={data_dir}"]
    config = load_config(path, overrides)
    if path.name.endswith("_fashion_mnist.yaml"):
        assert config.method.name == path.name.removesuffix("_fashion_mnist.yaml")
        assert config.model.width == 32 and config.train.epochs == 5  # from the shared base


def test_every_method_has_its_pipeline_and_every_space_fits_one(data_dir):
    """A user can run every registered method from ``pipelines/<method>_fashion_mnist.yaml``,
    and every ``tune_spaces/<name>.yaml`` is a valid space for the pipeline of that name (a
    space named after a family, moco.yaml, for its first member's)."""
    from ssl_ray.methods import METHODS
    from ssl_ray.tune.space import load_space

    for name in METHODS:
        # A method whose encoder reads colour is refused on Fashion-MNIST: its pipeline is
        # OpenClipart's (test_every_pipeline_file_loads checks both kinds load).
        colour = METHODS[name].colour_split != "none"
        dataset = "openclipart" if colour else "fashion_mnist"
        assert (ROOT / "pipelines" / f"{name}_{dataset}.yaml").is_file(), name
    for space in sorted((ROOT / "tune_spaces").glob("*.yaml")):
        pipeline = next(
            p
            for kind in ("fashion_mnist", "openclipart")
            for p in sorted((ROOT / "pipelines").glob(f"{space.stem}*_{kind}.yaml"))
        )
        overrides = [f"data.path={data_dir}", f"data.val_path={data_dir}"] if "openclipart" in pipeline.name else []
        assert load_space(space, load_raw(pipeline, overrides)).fields, space.name


def test_base_pipeline_is_extended_field_by_field(data_dir, tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 7, batch_size: 64}\nmethod: {name: byol}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {epochs: 3}\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.train.epochs, config.train.batch_size, config.method.name) == (3, 64, "byol")
    (tmp_path / "base.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "child.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "child.yaml")
