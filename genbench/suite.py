"""Suites: a population of models, how to train them, and what to measure.

A suite is TOML (see ``docs/suite-format.md``) loaded into the pydantic model
:class:`Suite`. :func:`load_suite` validates *everything* before any work starts:
the schema, every component name, every component's params (with every value the
grid can give them) and the scoring options. Problems are collected and raised
together as :class:`SuiteError`, one line each, ``field.path: what is allowed``.
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Scalar = bool | int | float | str


class SuiteError(Exception):
    """Every problem found in a suite, one ``path: message`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentRef(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrackVolume(Strict):
    """Record a weight-volume estimate during training (the paper's Figure 2)."""

    estimator: str = "laplace"
    every: int = Field(1, ge=1, description="estimate after every N epochs")
    params: dict[str, Any] = Field(default_factory=dict)


class TrainRecipe(Strict):
    """How every model of the population is trained (the grid may override any field)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(20, ge=1)
    lr_halve_every: int | None = Field(None, ge=1, description="halve the lr every N epochs")
    stop_train_loss: float | None = Field(None, gt=0, description="stop once train loss <= this")
    stop_train_acc: float | None = Field(None, gt=0, le=1, description="stop once train acc >= this")
    track_volume: TrackVolume | None = None


class Scoring(Strict):
    """Which hyperparameters the conditional MI ranges over, and which ones to report MI with."""

    preset: str = "paper"
    condition_on: list[str] | None = Field(
        None, description="hyperparameters omega ranges over (default: every grid key not in 'against')")
    against: list[str] | None = Field(
        None, description="hyperparameters to report MI with (default: every grid key naming dropout)")
    max_omega: int = Field(2, ge=0, le=3)
    bootstrap: int = Field(0, ge=0)
    seed: int = 0
    include_unconverged: bool = Field(
        False, description="score models that missed the training target too (default: left out)")


class Limits(Strict):
    """What a run may cost: a measure past ``measure_seconds`` is stopped and stored as
    failed; a grid of more than ``max_models`` models is refused before any work."""

    measure_seconds: float = Field(3600, gt=0, description="seconds one measure of one model may take")
    max_models: int = Field(10_000, ge=1, description="largest population a suite may expand to")


class Suite(Strict):
    name: str
    description: str = ""
    dataset: ComponentRef
    model: ComponentRef
    train: TrainRecipe = Field(default_factory=TrainRecipe)
    regularizers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    measures: dict[str, dict[str, Any]] = Field(default_factory=dict)
    volume: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="params of each volume estimator the measures use")
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)
    points: list[dict[str, Scalar]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    scoring: Scoring = Field(default_factory=Scoring)
    executor: ComponentRef = Field(default_factory=lambda: ComponentRef(name="local"))
    limits: Limits = Field(default_factory=Limits)

    @field_validator("measures", mode="before")
    @classmethod
    def _measures_list(cls, v: Any) -> Any:
        return {name: {} for name in v} if isinstance(v, list) else v

    @field_validator("grid")
    @classmethod
    def _grid_nonempty(cls, v: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid '{key}' is an empty list; give at least one value")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"grid '{key}' repeats a value")
        return v

    @model_validator(mode="after")
    def _points_use_known_keys(self) -> Suite:
        for i, point in enumerate(self.points):
            extra = set(point) - set(self.grid)
            if self.grid and extra:
                raise ValueError(f"points[{i}] sets {sorted(extra)}, which are not grid keys "
                                 f"({sorted(self.grid)}); every point must use the grid's keys")
        return self

    # -- derived ------------------------------------------------------------------
    def hyperparameters(self) -> list[str]:
        """The varied settings, in grid order (they index the population)."""
        keys = list(self.grid)
        for p in self.points:
            keys += [k for k in p if k not in keys]
        return keys

    def grid_points(self) -> list[dict[str, Scalar]]:
        """Cross product of the grid, then the explicit extra points (deduplicated)."""
        keys = list(self.grid)
        out = [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]
        if not keys and self.points:
            out = []  # the empty grid's one empty point is not a model when points are listed
        for p in self.points:
            if p not in out:
                out.append(dict(p))
        return out

    def n_models(self) -> int:
        """len(expand(suite)), counted without building the grid (a 10^6 grid is refused
        in microseconds, not after minutes and gigabytes)."""
        keys = list(self.grid)
        n_grid = math.prod(len(v) for v in self.grid.values()) if keys or not self.points else 0
        values = {k: set(map(repr, v)) for k, v in self.grid.items()}
        seen: list[dict[str, Scalar]] = []
        for p in self.points:
            in_grid = bool(keys) and set(p) == set(keys) and all(
                repr(v) in values[k] for k, v in p.items())
            if not in_grid and p not in seen:
                seen.append(p)
        return (n_grid + len(seen)) * len(self.seeds)

    def against(self) -> list[str]:
        if self.scoring.against is not None:
            return list(self.scoring.against)
        return [h for h in self.hyperparameters() if "dropout" in h]

    def condition_on(self) -> list[str]:
        if self.scoring.condition_on is not None:
            return list(self.scoring.condition_on)
        against = set(self.against())
        return [h for h in self.hyperparameters() if h not in against]


# -- resolving a grid point into one model's full configuration ---------------------
SECTIONS = ("dataset", "model", "train", "regularizers", "volume", "measures")


def split_key(key: str) -> list[str]:
    return key.split(".")


def apply_point(base: dict[str, Any], point: dict[str, Scalar]) -> dict[str, Any]:
    """Return a deep copy of ``base`` with each dotted grid key set to its value.

    ``model.depth`` sets ``model.params.depth``; ``dataset.x`` sets
    ``dataset.params.x``; ``train.lr`` sets the recipe; ``regularizers.dropout.rate``
    sets that regularizer's param (adding the regularizer if absent).
    """
    import copy

    cfg = copy.deepcopy(base)
    for key, value in point.items():
        parts = split_key(key)
        if parts[0] in ("model", "dataset"):
            parts = [parts[0], "params", *parts[1:]]
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def short_names(keys: list[str]) -> dict[str, str]:
    """Display names for hyperparameters: the path without its section, when unique."""
    short = {k: ".".join(split_key(k)[1:]) or k for k in keys}
    counts = {s: list(short.values()).count(s) for s in short.values()}
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


# -- loading and validation -----------------------------------------------------
def registry_dir() -> Path:
    return Path(str(resources.files("genbench.registry")))


def available_suites() -> list[str]:
    return sorted(p.stem for p in registry_dir().glob("*.toml"))


def read_suite_toml(ref: str | Path) -> tuple[dict[str, Any], str]:
    """Parse ``ref`` (a path, or a suite name from ``registry/``) into a dict."""
    path = Path(ref)
    if path.is_dir():
        raise SuiteError([f"suite: {path} is a directory; give a suite .toml file or a registry name"])
    if not path.exists():
        candidate = registry_dir() / f"{ref}.toml"
        if not candidate.exists():
            names = available_suites()
            close = difflib.get_close_matches(str(ref), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SuiteError([f"suite: '{ref}' is neither a file nor a registry suite{hint}; "
                              f"registry suites: {', '.join(names)}"])
        path = candidate
    try:
        data = tomllib.loads(read_text(path))
    except OSError as exc:
        raise SuiteError([f"suite: cannot read {path} ({exc.strerror or exc})"]) from None
    except UnicodeError as exc:
        raise SuiteError([str(exc)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError([f"{path}: not valid TOML ({exc})"]) from None
    data.setdefault("name", path.stem)
    return data, str(path)


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); ``ValueError`` naming the file
    and the first bad byte's offset otherwise."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnicodeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start}); save it as UTF-8") from None


def non_finite(data: Any, path: str = "") -> list[str]:
    """Every ``inf``/``nan`` in a parsed suite (TOML allows them; no suite setting does)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{path or 'suite'}: {data} is not a finite number; give a finite value"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite(v, f"{path}[{i}]")]
    return []


def pydantic_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path or 'suite'}: {msg}")
    return lines


def check_component(registry: Any, kind: str, name: str, params: dict[str, Any],
                     path: str, problems: list[str]) -> Any:
    from genbench.plugins import PluginError

    try:
        entry = registry.get(kind, name)
    except PluginError as exc:
        problems.append(f"{path}: {exc}")
        return None
    try:
        return entry.cls.Params(**params)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, prefix=f"{path}.params."
                                           if kind in ("dataset", "model") else f"{path}."))
        return None


def validate(data: dict[str, Any], registry: Any | None = None) -> Suite:
    """Validate a suite dict completely; raise :class:`SuiteError` listing every problem."""
    if registry is None:
        from genbench.plugins import get_registry

        registry = get_registry()
    problems: list[str] = non_finite(data)
    if problems:
        raise SuiteError(problems)
    try:
        suite = Suite(**data)
    except ValidationError as exc:
        # Keep going without the broken sections, so component problems are reported too.
        problems = pydantic_problems(exc)
        broken = {err["loc"][0] for err in exc.errors() if err["loc"]}
        try:
            suite = Suite(**{k: v for k, v in data.items() if k not in broken})
        except ValidationError:
            raise SuiteError(problems) from None
    for key in suite.hyperparameters():
        parts = split_key(key)
        if parts[0] not in ("model", "dataset", "train", "regularizers") or len(parts) < 2 \
                or (parts[0] == "regularizers" and len(parts) != 3):
            problems.append(f"grid.{key}: a grid key is a dotted path: model.<param>, "
                            "dataset.<param>, train.<field> or regularizers.<name>.<param>")
    if any(p.startswith("grid.") for p in problems):
        raise SuiteError(problems)
    n = suite.n_models()
    if n > suite.limits.max_models:
        raise SuiteError(problems + [
            f"grid: {n:,} models is more than limits.max_models = {suite.limits.max_models:,}; "
            "shrink the grid or seeds, or raise [limits] max_models"])

    base = suite.model_dump(include=set(SECTIONS))
    # Each value the grid can take is checked in the config it lands in.
    variants: list[tuple[str, dict[str, Any]]] = [("", base)]
    for key, values in suite.grid.items():
        variants += [(f"grid.{key}={v!r}", apply_point(base, {key: v})) for v in values]
    for i, point in enumerate(suite.points):
        variants.append((f"points[{i}]", apply_point(base, point)))

    reported: set[str] = set()
    for where, cfg in variants:
        local: list[str] = []
        check_component(registry, "dataset", cfg["dataset"]["name"], cfg["dataset"]["params"],
                         "dataset", local)
        check_component(registry, "model", cfg["model"]["name"], cfg["model"]["params"],
                         "model", local)
        try:
            TrainRecipe(**cfg["train"])
        except ValidationError as exc:
            local.extend(pydantic_problems(exc, prefix="train."))
        for name, params in cfg["regularizers"].items():
            check_component(registry, "regularizer", name, params, f"regularizers.{name}", local)
        for name, params in cfg["measures"].items():
            check_component(registry, "measure", name, params, f"measures.{name}", local)
        tv = cfg["train"].get("track_volume")
        if isinstance(tv, dict) and isinstance(tv.get("estimator"), str):
            check_component(registry, "volume_estimator", tv["estimator"], tv.get("params", {}),
                             "train.track_volume", local)
        for name, params in cfg["volume"].items():
            check_component(registry, "volume_estimator", name, params, f"volume.{name}", local)
        for line in local:
            if line not in reported:  # report each problem once, with the grid value causing it
                reported.add(line)
                problems.append(f"{line} (with {where})" if where else line)
    check_component(registry, "executor", suite.executor.name, suite.executor.params,
                     "executor", problems)

    hps = suite.hyperparameters()
    for field in ("condition_on", "against"):
        for h in getattr(suite.scoring, field) or []:
            if h not in hps:
                problems.append(f"scoring.{field}: '{h}' is not a grid key; choose from {hps}")
    from genbench.scoring import PRESETS

    if suite.scoring.preset not in PRESETS:
        problems.append(f"scoring.preset: unknown preset '{suite.scoring.preset}'; "
                        f"choose one of {sorted(PRESETS)}")
    if not suite.measures:
        problems.append("measures: list at least one measure")
    if problems:
        raise SuiteError(problems)
    return suite


def load_suite(ref: str | Path, registry: Any | None = None,
               overrides: dict[str, Any] | None = None) -> Suite:
    """Read and fully validate a suite (a path or a registry name)."""
    data, _ = read_suite_toml(ref)
    if overrides:
        data.update(overrides)
    return validate(data, registry)
