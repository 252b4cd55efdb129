"""Typed pipeline configuration.

A pipeline is one YAML file under ``pipelines/`` plus ``key.path=value`` overrides from the
command line. Everything is validated here, before Ray starts, and the parsed config is frozen:
values derived from it (scaled learning rate, steps per epoch) live in their own objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ssl_ray.methods import METHODS
from ssl_ray.methods.params import MethodParams
from ssl_ray.sections import (  # noqa: F401  (the sections, re-exported for the pipeline's users)
    DEFAULT_FASHION_MNIST_DIR,
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    Section,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
)
from ssl_ray.strict import yaml_problem
from ssl_ray.views.recipe import MULTI_CROP, BatchRecipe


class ConfigError(ValueError):
    """An invalid pipeline config; the message names the offending field."""


def method_fields(name: str) -> tuple[str, ...]:
    """The ``method.*`` fields method ``name`` takes (``name`` itself included)."""
    return tuple(METHODS[name].Params.model_fields) if name in METHODS else ("name",)


def _default_method() -> MethodParams:
    return METHODS["simclr"].Params(name="simclr")


# What each colour split does with an image, for the refusals.
_COLOUR_SPLITS = {"lab": "encodes the L and ab channels", "luminance": "predicts the ab channels from the L channel"}


class PipelineConfig(Section):
    # The method and its hyperparameters: ``name`` picks the method, every other field is one
    # of that method's own (``SSLMethod.Params``, in its module), checked against them and
    # defaulting to its paper's values, so ``name: moco_v1`` alone gives temperature 0.07.
    # Parsed, it is that method's typed ``Params`` object.
    method: SerializeAsAny[MethodParams] = Field(default_factory=_default_method)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()

    @field_validator("method", mode="before")
    @classmethod
    def _method_params(cls, raw: Any) -> Any:
        if isinstance(raw, MethodParams):
            return raw
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(f"method: expected a mapping with a name, got {raw!r}")
        name = raw.get("name", "simclr")
        if name not in METHODS:
            raise ValueError(f"method.name: unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
        params = METHODS[name].Params
        try:
            return params.model_validate({**raw, "name": name})
        except ValidationError as error:
            known = ", ".join(f for f in params.model_fields if f != "name")
            raise ValueError(_describe(error, "method", f"{name} (its fields: {known})")) from None

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        recipe = self.batch_recipe
        takers = sorted(name for name, method in METHODS.items() if method.crops == MULTI_CROP)
        refusal = recipe.refusal(self.method.name, self.data.channels, multi_crop_methods=takers)
        if refusal:
            raise ValueError(refusal)
        refusal = METHODS[self.method.name].model_refusal(self.method, self.model)
        if refusal:
            raise ValueError(refusal)
        if self.colour_split != "none":
            does = _COLOUR_SPLITS[self.colour_split]
            if self.data.channels != 3:
                raise ValueError(
                    f"method.name: {self.method.name} {does} of colour images; the data at {self.data.path} "
                    f"are read with 1 channel (data.channels=1): give it colour images with data.channels=3 "
                    f"(pipelines/{self.method.name}_openclipart.yaml)"
                )
            if self.model.backbone.startswith("vit"):
                raise ValueError(
                    f"model.backbone: the encoder that {does} (model.colour_split={self.colour_split}) "
                    "is built of ResNets"
                )
        if self.model.backbone.startswith("vit"):
            sizes = {self.augment.image_size, *([self.augment.local_image_size] if self.augment.local_crops else [])}
            for size in sorted(sizes):
                if size % self.model.patch_size:
                    raise ValueError(
                        f"model.patch_size: {self.model.patch_size} does not divide the {size} px crops "
                        "(augment.image_size / augment.local_image_size)"
                    )
        if self.train.batch_size % self.train.num_workers:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be a multiple of "
                f"train.num_workers ({self.train.num_workers})"
            )
        return self

    @property
    def batch_recipe(self) -> BatchRecipe:
        """What the method's batches carry, drawn by ``augment``: the data pipeline builds it."""
        return METHODS[self.method.name].recipe(self.method, self.augment)

    @property
    def encoder_head(self) -> tuple[int, ...]:
        """The head layers that belong to the encoder (``build_encoder``'s ``head``):
        ``model.encoder_head`` when set, else what the method keeps (``SSLMethod.kept_head``)."""
        if self.model.encoder_head is not None:
            return self.model.encoder_head
        return METHODS[self.method.name].kept_head(self.method)

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """``model.patch_grid`` when set, else the method's (``SSLMethod.patch_grid``)."""
        if self.model.patch_grid is not None:
            return self.model.patch_grid
        return METHODS[self.method.name].patch_grid(self.method)

    @property
    def colour_split(self) -> str:
        """How the encoder reads colour: ``model.colour_split`` when set, else the method's."""
        if self.model.colour_split is not None:
            return self.model.colour_split
        return METHODS[self.method.name].colour_split

    @property
    def run_prefix(self) -> str:
        return self.train.run_name or f"{self.method.name}-{self.data.source.replace('_', '-')}"

    def flat(self) -> dict[str, Any]:
        """``{"train.epochs": 10, ...}``: the shape MLflow params and Tune spaces use."""
        return {
            f"{section}.{key}": value
            for section, values in self.model_dump(mode="json").items()
            for key, value in values.items()
        }


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[:-1])}: is not a section, cannot set {dotted}")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "augment.crop_scale=[0.3,1]"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise ConfigError(f"override {pair!r}: expected section.field=value")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {pair!r}: not valid YAML ({yaml_problem(error)})") from None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _unknown_field(loc: list[str]) -> str:
    """What a pipeline's unknown key could have been: the section's fields, or the sections."""
    sections = PipelineConfig.model_fields
    if len(loc) == 1:
        return f"unknown section; the sections: {', '.join(sections)}"
    model = sections[loc[0]].annotation if loc[0] in sections else None
    if len(loc) == 2 and model is not None:
        return f"unknown field; {loc[0]}'s fields: {', '.join(model.model_fields)}"
    return "unknown field"


def _describe(error: ValidationError, section: str | None = None, owner: str | None = None) -> str:
    """One line per error, each naming its field (``section.field`` inside a section's own
    model; ``owner`` says whose fields an unknown one is not among)."""
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if len(loc) == 1 and message.startswith(f"{loc[0]}."):
            lines.append(message)  # a section's own check names its field already
            continue
        field = ".".join(([section] if section else []) + loc) or "(config)"
        if item["type"] == "extra_forbidden":
            message = f"unknown field for {owner}" if owner else _unknown_field(loc)
        shown = item.get("input")
        suffix = f" (got {shown!r})" if item["type"] != "extra_forbidden" and not isinstance(shown, dict) else ""
        lines.append(f"{field}: {message}{suffix}")
    return "; ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config: {_describe(error)}") from None


def _read_pipeline(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline file as a dict. ``base: other.yaml`` (relative to the file) names a pipeline
    whose sections this one extends, field by field; bases may have bases."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base: forms a cycle ({' -> '.join(p.name for p in (*seen, path))})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML at {yaml_problem(error)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = dict(loaded or {})
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_pipeline(path.parent / base, (*seen, path.resolve())), raw)


def load_raw(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The pipeline file (with its bases) and the overrides, merged but not yet validated: what
    a sweep varies, so a method's paper defaults still fill whatever a trial leaves out."""
    raw = _read_pipeline(Path(path)) if path is not None else {}
    return _merge(raw, parse_overrides(overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` (a pipeline as a dict) with ``section.field=value`` overrides applied (a new dict)."""
    return _merge(raw, parse_overrides(overrides))


def merge_dotted(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``{"train.epochs": 3, ...}`` set in it (a new dict)."""
    tree: dict[str, Any] = {}
    for dotted, value in values.items():
        _set_dotted(tree, dotted, value)
    return _merge(raw, tree)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    return config_from_dict(load_raw(path, overrides))


def storage_from_overrides(overrides: list[str]) -> StorageConfig:
    """``storage.field=value`` pairs (the pipeline's own spelling) for a command that takes no
    pipeline (``prepare``): any other section is refused, naming it."""
    tree = parse_overrides(overrides)
    others = sorted(set(tree) - {"storage"})
    if others:
        raise ConfigError(
            f"{others[0]}: this command takes only storage.* settings (storage.endpoint_url, storage.region)"
        )
    try:
        return StorageConfig.model_validate(tree.get("storage", {}))
    except ValidationError as error:
        raise ConfigError(f"invalid config: {_describe(error, 'storage')}") from None
