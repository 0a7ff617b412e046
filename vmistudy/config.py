"""The study schema: one YAML file -> one validated `StudySpec`.

Everything a user can set lives here, validated once at the edge. Errors become a
`ConfigError` whose message is one line naming the field path and what is allowed;
the command-line entry points turn it into exit status 2 before anything starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

DATA_ENV = "VMISTUDY_DATA"
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


class ConfigError(ValueError):
    """Bad study input; the message is one line meant for the user."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(Section):
    name: Literal["mnist", "fashion_mnist", "image_folder", "synthetic"] = "mnist"
    root: str | None = Field(None, description="dataset folder; else $VMISTUDY_DATA; else the user cache")
    download: StrictBool = False
    subset: StrictInt | None = Field(None, ge=1, description="use only the first N training images")
    test_subset: StrictInt | None = Field(None, ge=1, description="use only the first N test images")
    image_size: StrictInt = Field(28, ge=4, description="image_folder: images are resized to this square size")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="image_folder without train/ and test/ subfolders")
    classes: StrictInt = Field(10, ge=2, description="synthetic: number of classes")
    train_size: StrictInt = Field(2000, ge=1, description="synthetic: training images")
    test_size: StrictInt = Field(500, ge=1, description="synthetic: test images")

    def resolved_root(self) -> Path:
        if self.root:
            return Path(self.root).expanduser()
        if os.environ.get(DATA_ENV):
            return Path(os.environ[DATA_ENV]).expanduser()
        return Path.home() / ".cache" / "vmistudy" / "data"

    @model_validator(mode="after")
    def _root_exists(self) -> DataSpec:
        if self.name == "synthetic" or self.download:
            return self
        root = self.resolved_root()
        needed = root / TORCHVISION_FOLDERS[self.name] / "raw" if self.name in TORCHVISION_FOLDERS else root
        if not needed.is_dir():
            raise ValueError(f"{needed} does not exist; point data.root or ${DATA_ENV} at the dataset, "
                             "or set data.download: true")
        return self


class ModelSpec(Section):
    backbone: Literal["mlp", "conv"] = "mlp"
    hidden: StrictInt = Field(512, ge=1, description="width of the mlp layers")
    gaussian_dims: StrictInt = Field(16, ge=0, description="d, the size of the Gaussian part z")
    categories: StrictInt | None = Field(10, ge=2, description="K, the categorical part c; null for none")
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    likelihood_std: float = Field(0.1, gt=0, description="gaussian likelihood: fixed pixel standard deviation")
    channels_last: StrictBool = True

    @model_validator(mode="after")
    def _some_latent(self) -> ModelSpec:
        if self.gaussian_dims == 0 and self.categories is None:
            raise ValueError("the latent is empty: set gaussian_dims >= 1 or categories >= 2")
        return self


class TemperatureSpec(Section):
    """tau(step) = max(min, start * exp(-rate * step')), step' = step rounded down to a multiple of every."""
    start: float = Field(1.0, gt=0)
    min: float = Field(0.5, gt=0)
    rate: float = Field(3e-4, ge=0)
    every: StrictInt = Field(1, ge=1, description="recompute tau every N steps and hold it in between")

    @model_validator(mode="after")
    def _min_below_start(self) -> TemperatureSpec:
        if self.min > self.start:
            raise ValueError(f"min ({self.min}) must be <= start ({self.start})")
        return self


class TrainSpec(Section):
    epochs: StrictInt = Field(10, ge=1)
    batch_size: StrictInt = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the VAE")
    q_lr: float = Field(1e-3, gt=0, description="Adam learning rate of Q")
    beta: float = Field(1.0, ge=0, description="KL weight; 1 is the plain ELBO")
    seed: StrictInt = Field(0, ge=0)
    temperature: TemperatureSpec = TemperatureSpec()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: StrictInt | None = Field(None, ge=1, description="torch CPU threads; default torch's own")


class MISpec(Section):
    lambda_mi: float = Field(0.0, ge=0, description="weight of the MI regularizer; 0 trains the ELBO alone")
    gaussian: list[StrictInt] = Field(default_factory=list, description="indices of Gaussian dims in c^")
    categorical: StrictBool = True
    entropy: Literal["aggregate", "prior"] = Field(
        "aggregate", description="H(c) of the categorical target: entropy of the batch's mean q(c|x) "
                                 "(aggregate), or the constant log K of the thesis (prior, collapses)")


class ResourcesSpec(Section):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class TrackingSpec(Section):
    uri: str | None = None
    experiment: str | None = None


class StudySpec(Section):
    name: str = Field("study", min_length=1)
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    mi: MISpec = MISpec()
    search: dict[str, Any] | None = Field(None, description="the study service's search space")
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="after")
    def _targets_in_latent(self) -> StudySpec:
        d = self.model.gaussian_dims
        for i in self.mi.gaussian:
            if not 0 <= i < d:
                raise ValueError(f"mi.gaussian: index {i} is outside the Gaussian latent (allowed 0..{d - 1})")
        if len(set(self.mi.gaussian)) != len(self.mi.gaussian):
            raise ValueError("mi.gaussian: indices must be distinct")
        if self.mi.categorical and self.model.categories is None:
            raise ValueError("mi.categorical: the model has no categorical part (model.categories is null)")
        if not self.mi.gaussian and not self.mi.categorical:
            raise ValueError("mi: no MI target; set mi.categorical: true or list mi.gaussian dims")
        if self.model.backbone == "conv" and self.data.name == "image_folder" and self.data.image_size % 4:
            raise ValueError(f"data.image_size: the conv backbone needs a multiple of 4, got {self.data.image_size}")
        return self


def load(path: str | Path, overrides: list[str] = ()) -> StudySpec:
    """Read a study file, apply `key.path=value` overrides, validate."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=str(path))


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the study file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: the study file is empty; it needs at least a data section")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the study file must be a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """`train.epochs=3` sets raw['train']['epochs'] = 3; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[:i + 1])} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML") from None


def validate(raw: dict, source: str = "study") -> StudySpec:
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e.errors()[0])}") from None


def describe(error: dict) -> str:
    """One line for one pydantic error: the field path, what is wrong, what is allowed."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(loc[:-1]))
        return f"{path}: unknown key; allowed here: {allowed}"
    if error["type"] == "missing":
        return f"{path}: required"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return f"{path or 'study'}: {message}" if loc else message
    return f"{path}: {message} (got {error['input']!r})"


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = StudySpec
    for part in loc:
        model = model.model_fields[part].annotation
    return list(model.model_fields)



def flatten(spec: StudySpec) -> dict[str, Any]:
    """`{'train.temperature.start': 1.0, ...}`: one entry per leaf field (the search space stays one entry)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and prefix != "search":
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            out[prefix] = value

    walk("", spec.model_dump())
    return out
