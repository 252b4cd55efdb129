"""Search spaces: a ``tune_spaces/*.yaml`` file -> Ray Tune's ``param_space``.

A space file maps pipeline fields (``section.field``, as in command-line overrides) to one
distribution each:

    method.temperature: {loguniform: [0.05, 0.5]}
    train.batch_size: {choice: [128, 256, 512]}
    augment.strength: {grid: [0.25, 0.5, 1.0]}

- ``choice`` / ``grid``: a non-empty list of values (``grid`` tries every one, multiplying the
  trials; ``choice`` samples);
- ``uniform``: ``[low, high]``, low < high; ``loguniform``: the same with 0 < low;
- ``randint``: ``[low, high]`` integers, high excluded (Tune's convention).

Every entry is checked before any trial starts: the field must exist, the distribution must be
one of the above with sound arguments, and each listed value (each end of a range) must make a
valid pipeline together with the rest of the config. Errors name the file and the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssl_ray.config import ConfigError, PipelineConfig, config_from_dict, merge_dotted, method_fields
from ssl_ray.strict import yaml_problem

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# Fields a sweep sets itself (each trial's run name and tracking), so a space may not.
RESERVED = ("train.run_name", "train.storage_path", "tracking.tracking_uri", "tracking.experiment")


class SpaceError(ConfigError):
    """An invalid search space; the message names the file and the entry."""


@dataclass(frozen=True)
class Dimension:
    field: str  # "section.field"
    kind: str  # one of DISTRIBUTIONS
    args: tuple[Any, ...]

    @property
    def values_to_check(self) -> tuple[Any, ...]:
        """The values that must each make a valid pipeline: every listed value, a range's ends."""
        if self.kind in ("choice", "grid"):
            return self.args
        if self.kind == "randint":
            return (self.args[0], self.args[1] - 1)
        return self.args

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)


@dataclass(frozen=True)
class SearchSpace:
    source: str
    dimensions: tuple[Dimension, ...]

    @property
    def fields(self) -> list[str]:
        return [d.field for d in self.dimensions]

    @property
    def has_grid(self) -> bool:
        return any(d.kind == "grid" for d in self.dimensions)

    @property
    def grid_size(self) -> int:
        """Trials per sample: every combination of the grid entries."""
        size = 1
        for dimension in self.dimensions:
            if dimension.kind == "grid":
                size *= len(dimension.args)
        return size

    def param_space(self) -> dict[str, dict[str, Any]]:
        """Nested by section, as Tune passes it back to each trial."""
        space: dict[str, dict[str, Any]] = {}
        for dimension in self.dimensions:
            section, name = dimension.field.split(".", 1)
            space.setdefault(section, {})[name] = dimension.to_tune()
        return space

    def largest(self, field: str, default: Any) -> Any:
        """The largest value a field can take in this space (``default`` when not swept)."""
        for dimension in self.dimensions:
            if dimension.field == field:
                return max(dimension.values_to_check)
        return default


def trial_values(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A trial's nested ``config`` from Tune -> ``{"section.field": value}``."""
    return {f"{section}.{name}": value for section, fields in params.items() for name, value in fields.items()}


def _known_field(field: str, raw_config: dict[str, Any]) -> bool:
    section, _, name = field.partition(".")
    if section == "method":  # the fields of the base pipeline's method
        return name in method_fields((raw_config.get("method") or {}).get("name", "simclr"))
    model = PipelineConfig.model_fields.get(section)
    return bool(name) and model is not None and name in model.annotation.model_fields


def _parse_dimension(where: str, field: Any, spec: Any, raw_config: dict[str, Any]) -> Dimension:
    if not isinstance(field, str) or not _known_field(field, raw_config):
        raise SpaceError(f"{where}: unknown field (expected section.field of a pipeline, e.g. method.temperature)")
    if field in RESERVED:
        raise SpaceError(f"{where}: set by the sweep itself, cannot be searched")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: expected one distribution, e.g. {{choice: [a, b]}}; got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return Dimension(field, kind, tuple(args))
    numbers = isinstance(args, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not (numbers and len(args) == 2):
        raise SpaceError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = args
    if not low < high:
        raise SpaceError(f"{where}: empty range [{low}, {high}]: need low < high")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs 0 < low, got {low}")
    if kind == "randint" and not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise SpaceError(f"{where}: randint needs integers, got {args!r}")
    if kind != "randint" and not all(math.isfinite(a) for a in args):
        raise SpaceError(f"{where}: {kind} needs finite bounds, got {args!r}")
    return Dimension(field, kind, (low, high))


def parse_space(entries: Any, raw_config: dict[str, Any], source: str = "search space") -> SearchSpace:
    """Check every entry against the pipeline ``raw_config`` (``config.load_raw``)."""
    if not isinstance(entries, dict) or not entries:
        raise SpaceError(f"{source}: expected a mapping of section.field: {{distribution: args}}")
    dimensions = []
    for field, spec in entries.items():
        where = f"{source}: {field}"
        dimension = _parse_dimension(where, field, spec, raw_config)
        for value in dimension.values_to_check:
            try:
                config_from_dict(merge_dotted(raw_config, {field: value}))
            except ConfigError as error:
                raise SpaceError(f"{where}: {value!r} does not make a valid pipeline ({error})") from None
        dimensions.append(dimension)
    return SearchSpace(source, tuple(dimensions))


def load_space(path: str | Path, raw_config: dict[str, Any]) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space not found: {path}")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpaceError(f"{path}: not valid YAML at {yaml_problem(error)}") from None
    return parse_space(entries, raw_config, str(path))
