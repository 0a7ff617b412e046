"""The study schema: one YAML file -> one validated `StudySpec`.

Everything a user can set lives here, validated once at the edge. Errors become a
`InputError` whose message is one line naming the field path and what is allowed;
the command-line entry points turn it into exit status 2 before anything starts.
"""
from __future__ import annotations

import math
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from .errors import InputError

DATA_ENV = "VMISTUDY_DATA"
READS_DATA = "reads_data"  # the validation context's key: whether the command reads the images (DataSpec)
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # no path separator, never "." or "..": safe as one folder name


def has_credentials(uri: str) -> bool:
    """`scheme://user:pass@host/...`: a secret that would end up in params, spec files and logs."""
    return "://" in uri and "@" in urlsplit(uri).netloc


INT_LIMIT = 2 ** 63  # torch, numpy and Tune's loggers hold integers in 64 bits


def _too_large(value: Any) -> bool:
    """An integer that does not fit in 64 bits, alone or in a list (sections check their own fields)."""
    if isinstance(value, (list, tuple)):
        return any(map(_too_large, value))
    return isinstance(value, int) and abs(value) >= INT_LIMIT


class Section(BaseModel):
    # inf and nan (also 1e400, which YAML reads as a string and a float as inf) fit no field
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        """Refused here rather than as an overflow inside torch once a trial runs."""
        if _too_large(value):
            raise ValueError("integers must be below 2**63")
        return value


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
        # os.path's expanduser leaves ~unknown-user as it is where Path's raises
        if self.root:
            return Path(os.path.expanduser(self.root))
        if os.environ.get(DATA_ENV):
            return Path(os.path.expanduser(os.environ[DATA_ENV]))
        return Path.home() / ".cache" / "vmistudy" / "data"

    @model_validator(mode="after")
    def _root_exists(self, info: ValidationInfo) -> DataSpec:
        # a command that reads no images (the report, over MLflow) may run where the dataset is not
        if self.name == "synthetic" or self.download or not (info.context or {}).get(READS_DATA, True):
            return self
        root = self.resolved_root()
        needed = root / TORCHVISION_FOLDERS[self.name] / "raw" if self.name in TORCHVISION_FOLDERS else root
        if not os.path.isdir(needed):  # False, not OSError, for a name too long or a NUL byte
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
    prior: Literal["standard", "mixture"] = Field(
        "standard", description="p(z): N(0, I) as in the thesis, or mixture: p(z|c) = N(mu_c, I) with learned "
                                "means mu_c, one per category (GMVAE-style; needs both latent parts)")
    prior_spread: float = Field(1.0, ge=0, description="mixture: the means' initial draw is N(0, spread^2 I); "
                                                      "0 starts every mu_c at the origin, as the standard prior")
    prior_variance: Literal["unit", "learned"] = Field(
        "unit", description="mixture: p(z|c) = N(mu_c, I), or learned: N(mu_c, diag sigma_c^2) with sigma_c learned "
                            "too (VaDE's Gaussian mixture), starting at 1 or, after pretraining, at each k-means "
                            "cluster's spread")

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


class CapacitySpec(Section):
    """JointVAE's controlled capacity for one latent part: its KL term in the loss becomes
    gamma * |KL - C(t)|, C rising linearly from 0 to `cap` nats over `steps` steps. cap null: beta * KL."""
    cap: float | None = Field(None, ge=0, description="nats the part's KL is steered to; null keeps beta * KL")
    gamma: float = Field(30.0, gt=0, description="weight of |KL - C(t)|")
    steps: StrictInt = Field(5000, ge=1, description="training steps over which C rises from 0 to cap")


class CapacitiesSpec(Section):
    gaussian: CapacitySpec = CapacitySpec()
    categorical: CapacitySpec = CapacitySpec()


class TrainSpec(Section):
    epochs: StrictInt = Field(10, ge=1)
    batch_size: StrictInt = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the VAE")
    q_lr: float = Field(1e-3, gt=0, description="Adam learning rate of Q")
    beta: float = Field(1.0, ge=0, description="KL weight; 1 is the plain ELBO")
    seed: StrictInt = Field(0, ge=0)
    pretrain_epochs: StrictInt = Field(
        0, ge=0, description="the first epochs train the ELBO alone (no MI term; under model.prior mixture every "
                             "mu_c held at the origin: the standard prior); then a mixture prior's means start at "
                             "the k-means centres of the training split's z means (VaDE's start; beyond the thesis)")
    temperature: TemperatureSpec = TemperatureSpec()
    capacity: CapacitiesSpec = CapacitiesSpec()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: StrictInt | None = Field(None, ge=1, description="torch CPU threads; default torch's own")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="the training step's forward passes: float32, or bfloat16 autocast (matmuls and "
                               "convolutions in bf16; weights, optimizer and evaluation stay float32)")


class InvarianceSpec(Section):
    """An option beyond the thesis (docs/RESULTS.md): the MI between the code of an image and the code of a
    randomly transformed copy, I(c; c') (IIC's objective), added to the MI term with this weight."""
    weight: float = Field(0.0, ge=0, description="weight of I(c; c') inside the MI term (scaled by lambda_mi "
                                                 "like the rest of it); 0: the thesis' form, no transformed copy")
    rotate: float = Field(15.0, ge=0, le=180, description="largest rotation of the copy, degrees")
    translate: float = Field(0.1, ge=0, le=0.5, description="largest shift of the copy, fraction of the side")
    scale: float = Field(0.1, ge=0, lt=1, description="largest relative zoom of the copy (1 +- scale)")
    copies: Literal["affine", "adversarial"] = Field(
        "affine", description="how the training copies are made: affine (rotate, translate, scale at random; IIC) | "
                              "adversarial (x + the perturbation of L2 norm epsilon that moves q(c|x) most: "
                              "IMSAT's virtual adversarial copy)")
    epsilon: float = Field(1.0, gt=0, description="L2 norm of the adversarial perturbation, in pixel units "
                                                  "(images in [0, 1]; an MNIST digit's norm is about 9)")


class MISpec(Section):
    lambda_mi: float = Field(0.0, ge=0, description="weight of the MI regularizer; 0 trains the ELBO alone")
    warmup_steps: StrictInt = Field(0, ge=0, description="the MI term's weight rises linearly from 0 to lambda_mi "
                                                         "over this many steps (beyond the thesis); 0: full from the "
                                                         "first step")
    gaussian: list[StrictInt] = Field(default_factory=list, description="indices of Gaussian dims in c^")
    categorical: StrictBool = True
    entropy: Literal["aggregate", "prior"] = Field(
        "aggregate", description="H(c^): of the aggregate posterior q(c^) over the batch or split (aggregate: exact "
                                 "for c, a proven lower bound for Gaussian dims), or the thesis' prior constants "
                                 "log K and |S|/2 log(2 pi e) (prior: c collapses, z^ gains by shrinking)")
    fresh_q_steps: StrictInt = Field(0, ge=0, description="after the last epoch, fit a fresh Q to the frozen VAE "
                                     "for this many Adam steps (thesis eq. 4.8) and report frozen_mi_lower_bound_"
                                     "encoder and _prior; 0: off")
    invariance: InvarianceSpec = InvarianceSpec()


class ParamSpec(Section):
    """One searched field: exactly one of uniform / loguniform / int ([low, high]) or choice ([values])."""
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[StrictInt, StrictInt] | None = None
    choice: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="sample only when earlier parameters have these values")

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        kinds = [k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, int, choice (got {kinds or 'none'})")
        bounds = getattr(self, kinds[0])
        if kinds[0] == "choice" and not bounds:
            raise ValueError("choice: needs at least one value")
        if kinds[0] != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"{kinds[0]}: low must be < high (got {list(bounds)})")
        if kinds[0] == "loguniform" and bounds[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0 (got {bounds[0]})")
        return self


class MISubset(Section):
    """A named choice of MI targets, so that the search picks subsets by name."""
    categorical: StrictBool = False
    gaussian: list[StrictInt] = Field(default_factory=list)


class SchedulerSpec(Section):
    """ASHA's rungs. The defaults are the measured best on the learning-curve table (docs/STUDY_LAYER.md): early
    accuracy ranks the eventual best configurations last, kl_categorical at epoch 1 mostly in the top half."""
    name: Literal["asha", "none"] = "asha"
    grace_period: StrictInt = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="a rung keeps the top 1/reduction_factor")
    rungs: StrictInt | None = Field(1, ge=1, description="rungs where trials may stop (at grace_period, "
                                                         "x reduction_factor, ...); null: every one below max_t")
    metric: str | None = Field(None, description="what rungs rank on; null: kl_categorical (max) for a model "
                                                 "with a categorical code, else search.metric and search.mode")
    mode: Literal["max", "min"] = Field("max", description="direction of scheduler.metric")


SUBSET_PATH = "mi.subset"  # the search-space key that picks one of search.subsets by name
AGREEMENT = "seed_agreement"  # a bundle's label-free score across its seeds (metrics.seed_agreement)


class SearchSpec(Section):
    metric: str = "mi_lower_bound"
    mode: Literal["max", "min"] = "max"
    algorithm: Literal["auto", "gp", "optuna", "random", "grid"] = "auto"
    seed: StrictInt = Field(0, ge=0, lt=2 ** 32, description="seed of the sampler (numpy's limit)")
    startup_trials: StrictInt = Field(5, ge=1, description="auto, gp, optuna: configurations sampled at random "
                                                           "before the model (a Gaussian process, TPE)")
    multivariate: StrictBool = Field(True, description="auto, optuna: TPE models the parameters jointly")
    num_samples: StrictInt = Field(4, ge=1, description="configurations to try (grid: ignored, each point once)")
    max_concurrent: StrictInt | None = Field(None, ge=1)
    replicates: StrictInt = Field(1, ge=1, description="seeds per configuration: train.seed, +1, ...")
    paired_baseline: StrictBool = Field(False, description="a lambda_mi = 0 twin of every trial, same seed")
    bundle: StrictBool = Field(False, description="train a configuration's replicates and twins as one vectorized "
                                                  "trial (mlp only): Tune runs one trial per configuration")
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    subsets: dict[str, MISubset] = Field(default_factory=dict)
    scheduler: SchedulerSpec = SchedulerSpec()
    max_failures: StrictInt = Field(1, ge=0, description="retries of a failed trial, from its last checkpoint")
    reuse_actors: StrictBool = Field(True, description="run the next trial in a finished trial's worker "
                                                       "(saves seconds per trial; off: each trial waits for its own)")
    storage: str = Field("~/vmistudy-results", description="absolute path or URI (s3://, gs://) of Tune's storage")

    def trial_fields(self) -> set[str]:
        """The fields in which a trial's spec may differ from the study's (study.trial_spec): the searched ones (a
        subset's as the MI fields it sets), train.seed (replicates) and mi.lambda_mi (twins)."""
        subset = {f"mi.{field}" for field in MISubset.model_fields} if SUBSET_PATH in self.space else set()
        return {*self.space, *subset, "train.seed", "mi.lambda_mi"} - {SUBSET_PATH}

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.algorithm == "grid":
            for path, param in self.space.items():
                if param.kind != "choice" or param.when:
                    raise ValueError(f"space.{path}: grid search takes unconditional choice lists only")
        names = list(self.space)
        for path, param in self.space.items():
            for other in param.when or {}:
                if other not in names[:names.index(path)]:
                    raise ValueError(f"space.{path}.when: {other} must be a parameter listed before it")
        if SUBSET_PATH in self.space:
            unknown = set(self.space[SUBSET_PATH].choice or []) - set(self.subsets)
            if self.space[SUBSET_PATH].kind != "choice" or unknown:
                raise ValueError(f"space.{SUBSET_PATH}: must be a choice among search.subsets "
                                 f"({', '.join(self.subsets) or 'none defined'})")
        if not ("://" in self.storage or os.path.isabs(os.path.expanduser(self.storage))):
            raise ValueError(f"storage: must be an absolute path or a URI such as s3://bucket/dir (got {self.storage})")
        if has_credentials(self.storage):
            raise ValueError("storage: remove the credentials from the URI; give them through the environment "
                             "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance profile or workload identity)")
        return self


class ResourcesSpec(Section):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial; torch uses this many threads")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; 0.25 lets four trials share one GPU")


class TrackingSpec(Section):
    enabled: StrictBool = True
    uri: str | None = Field(None, description="MLflow tracking URI (http://host:port, sqlite:////abs/path.db); "
                                             "default: sqlite under search.storage")
    experiment: str | None = Field(None, pattern=NAME_PATTERN, max_length=100,
                                   description="MLflow experiment (names its artifact folder); default the study name")
    figures_every: StrictInt = Field(5, ge=0, description="log the figures every N epochs (0: only at the end)")
    log_model: StrictBool = Field(True, description="log the final model with mlflow.pytorch")
    system_metrics: StrictBool = Field(True, description="log the trial's machine's system metrics (CPU, memory; GPU "
                                                         "with nvidia-ml-py) to its run every 10 s")

    @model_validator(mode="after")
    def _no_secrets(self) -> TrackingSpec:
        if self.uri and has_credentials(self.uri):
            raise ValueError("uri: remove the credentials from the URI; set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD in the environment instead (MLflow reads them)")
        return self


class ReplaySpec(Section):
    """The study layer's instrument: trials replay a recorded learning-curve table instead of training."""
    table: str | None = Field(None, description="a table written by python -m benchmarks.curves; null: train")
    time_scale: float = Field(0.0, ge=0, le=1e3, description="a replayed epoch takes its recorded seconds times "
                                                             "this (0: at once)")

    @field_validator("table")
    @classmethod
    def _absolute(cls, table: str | None) -> str | None:
        """Absolute, since Tune runs trials in their own folders; it must be a file."""
        if table is None:
            return None
        path = Path(os.path.expanduser(table)).resolve()
        if not os.path.isfile(path):
            raise ValueError(f"{table} is not a file (write one with python -m benchmarks.curves)")
        return str(path)


class StudySpec(Section):
    name: str = Field("study", pattern=NAME_PATTERN, max_length=100,
                      description="letters, digits, . _ - ; names the study's folder and experiment")
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    mi: MISpec = MISpec()
    search: SearchSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    replay: ReplaySpec = ReplaySpec()

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        d = self.model.gaussian_dims
        for i in self.mi.gaussian:
            if not 0 <= i < d:
                raise ValueError(f"mi.gaussian: index {i} is outside the Gaussian latent (allowed 0..{d - 1})")
        if len(set(self.mi.gaussian)) != len(self.mi.gaussian):
            raise ValueError("mi.gaussian: indices must be distinct")
        if self.model.prior == "mixture":
            if d == 0 or self.model.categories is None:
                raise ValueError("model.prior: mixture needs gaussian_dims >= 1 and categories >= 2")
            if self.mi.gaussian:
                raise ValueError("mi.gaussian: under model.prior mixture the entropy of z has no closed form; "
                                 "use the categorical target only")
        elif self.model.prior_variance == "learned":
            raise ValueError("model.prior_variance: learned variances are the mixture prior's; set model.prior: "
                             "mixture, or unit")
        _check_pretraining(self)
        capacity = self.train.capacity
        if capacity.gaussian.cap is not None and d == 0:
            raise ValueError("train.capacity.gaussian.cap: the model has no Gaussian part (model.gaussian_dims is 0)")
        if capacity.categorical.cap is not None:
            if self.model.categories is None:
                raise ValueError("train.capacity.categorical.cap: the model has no categorical part")
            if capacity.categorical.cap > math.log(self.model.categories):
                raise ValueError(f"train.capacity.categorical.cap: KL to the uniform prior is at most "
                                 f"log K = {math.log(self.model.categories):.3f} nats, got {capacity.categorical.cap}")
        if self.mi.categorical and self.model.categories is None:
            raise ValueError("mi.categorical: the model has no categorical part (model.categories is null)")
        if self.mi.invariance.weight > 0 and self.model.categories is None:
            raise ValueError("mi.invariance.weight: the invariance term compares categorical codes; the model "
                             "has none (model.categories is null)")
        if not self.mi.gaussian and not self.mi.categorical:
            raise ValueError("mi: no MI target; set mi.categorical: true or list mi.gaussian dims")
        for path in self.search.space if self.search else ():
            if path != SUBSET_PATH and path not in flatten(self):
                raise ValueError(f"search.space.{path}: not a field of the study (see the README's study file)")
        ranked_on = {"search.metric": self.search.metric, "search.scheduler.metric": self.search.scheduler.metric
                     } if self.search else {}
        for field, metric in ranked_on.items():
            if metric == AGREEMENT and metric not in metric_names(self):
                raise ValueError(f"{field}: {AGREEMENT} compares a configuration's seeds in one trial bundle; it "
                                 "needs search.bundle: true, search.replicates >= 2 and model.categories")
            if metric is not None and metric not in metric_names(self):
                raise ValueError(f"{field}: {metric} is not a per-epoch metric of this model; "
                                 f"allowed: {', '.join(sorted(metric_names(self)))}")
        if (self.search and "://" in self.search.storage and self.tracking.enabled and not self.tracking.uri):
            raise ValueError("tracking.uri: required when search.storage is a URI (the default sqlite store "
                             "lives beside local storage); give an MLflow server, e.g. http://mlflow:5000")
        if self.search and self.search.bundle:
            _check_bundle(self)
        if self.model.backbone == "conv" and self.data.name == "image_folder" and self.data.image_size % 4:
            raise ValueError(f"data.image_size: the conv backbone needs a multiple of 4, got {self.data.image_size}")
        return self

    @property
    def recipe(self) -> Recipe:
        return Recipe(self.data, self.model, self.train, self.mi)


def _check_pretraining(spec: StudySpec) -> None:
    pretrain = spec.train.pretrain_epochs
    if pretrain and pretrain >= spec.train.epochs:
        raise ValueError(f"train.pretrain_epochs: must be below train.epochs ({spec.train.epochs}): the epochs after "
                         f"it train the method, got {pretrain}")
    if pretrain and spec.model.prior == "mixture" and spec.model.prior_spread:
        raise ValueError("model.prior_spread: with train.pretrain_epochs the means are held at the origin, then "
                         "start at k-means centres; set it to 0")


def _check_bundle(spec: StudySpec) -> None:
    """What search.bundle cannot do: the conv backbone, the invariance term (bundle.py), or a replayed study."""
    searched = spec.search.space.get("model.backbone")
    backbones = {spec.model.backbone, *((searched.choice or []) if searched else [])}
    if "conv" in backbones:
        raise ValueError("search.bundle: bundles train the mlp backbone only (the conv backbone's BatchNorm "
                         "statistics are not vectorized); set model.backbone: mlp or search.bundle: false")
    if spec.mi.invariance.weight or "mi.invariance.weight" in spec.search.space:
        raise ValueError("search.bundle: bundles do not train the invariance term (mi.invariance.weight); "
                         "set it to 0 or search.bundle: false")
    if spec.replay.table:
        raise ValueError("search.bundle: a replayed study (replay.table) trains no models to bundle; "
                         "set search.bundle: false")


@dataclass(frozen=True)
class Recipe:
    """What one trained model is made of: the data, model, train and MI sections of a validated study.

    The core (Trainer, figures, metrics) reads these and nothing else; search, resources and tracking
    belong to the study service. A checkpoint keeps `model_dump()`; `validate(dump).recipe` reads it back.
    """
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    mi: MISpec

    def model_dump(self) -> dict[str, dict]:
        return {"data": self.data.model_dump(), "model": self.model.model_dump(),
                "train": self.train.model_dump(), "mi": self.mi.model_dump()}


def load(path: str | Path, overrides: list[str] = (), reads_data: bool = True) -> StudySpec:
    """Read a study file, apply `key.path=value` overrides, validate (`reads_data`: the data root must exist)."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source=str(path), reads_data=reads_data)


MAX_BYTES = 1 << 20  # a study file is a few KiB
MAX_DEPTH = 20  # a study nests 6 deep (search.space.<path>.when.<path>: value)
MAX_VALUES = 10_000  # values in a document, its aliases expanded; a study has a few hundred


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that no study is: nested too deep, aliases that expand too far, a key twice."""


class _StudyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that checks each node as it is composed, before any value is built: a few lines of
    nesting or of aliases ("billion laughs") would otherwise exhaust the stack or expand to 10^9 values."""
    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # the anchored node, counted where it was composed
        if self.depth == MAX_DEPTH:
            raise _Refused(problem=f"nesting deeper than {MAX_DEPTH} levels", problem_mark=self.peek_event().start_mark)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        _check(node)
        return node


def _check(node: yaml.Node) -> None:
    """Count the node's values with aliases expanded (an alias to a node still being composed refers to
    itself: endless); refuse a mapping that gives a key twice (the last would silently win)."""
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    children = [n for pair in pairs for n in pair] or (node.value if isinstance(node, yaml.SequenceNode) else [])
    node.expanded = 1 + sum(getattr(child, "expanded", MAX_VALUES) for child in children)
    if node.expanded > MAX_VALUES:
        raise _Refused(problem=f"more than {MAX_VALUES} values, aliases expanded", problem_mark=node.start_mark)
    keys = Counter(k.value for k, _ in pairs if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge")
    twice = next((k for k, n in keys.items() if n > 1), None)
    if twice is not None:
        raise _Refused(problem=f"the key {twice!r} is given twice", problem_mark=node.start_mark)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_StudyLoader)


def _yaml_problem(e: Exception) -> str:
    """'line 3, column 5: YAML syntax error: ...', or a value YAML read but Python could not build."""
    if not isinstance(e, yaml.YAMLError):  # ValueError: a date such as 2024-13-01, an integer of 5000 digits
        return f"a value cannot be read ({str(e).split(';')[0]})"
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{'' if isinstance(e, _Refused) else 'YAML syntax error: '}{problem}"


def read_yaml(path: Path) -> dict:
    text = _read_text(path)
    try:
        raw = _parse(text)
    except (yaml.YAMLError, ValueError) as e:
        raise InputError(f"{path}: {_yaml_problem(e)}") from None
    if raw is None:
        raise InputError(f"{path}: the study file is empty; it needs at least a data section")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the study file must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _read_text(path: Path) -> str:
    """The text of a regular file (a FIFO or a device could block or never end) of at most MAX_BYTES of UTF-8."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read the study file ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(f"{path}: is {kind}; give a study file (YAML text)")
    if len(data) > MAX_BYTES:
        raise InputError(f"{path}: larger than {MAX_BYTES >> 20} MiB; a study file is a few KiB of YAML text")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); a study file "
                         "is YAML text") from None


def apply_override(raw: dict, item: str) -> None:
    """`train.epochs=3` sets raw['train']['epochs'] = 3; the value is read as YAML.

    Keys that hold dots themselves (the search space's `mi.lambda_mi`) are matched whole where they exist.
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise InputError(f"--set {item!r}: expected key.path=value")
    parts, node, walked = key.split("."), raw, []
    while True:
        n = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in node), 1)
        name, parts = ".".join(parts[:n]), parts[n:]
        walked.append(name)
        if not parts:
            break
        if node.get(name) is None:
            node[name] = {}
        node = node[name]
        if not isinstance(node, dict):
            raise InputError(f"--set {key}: {'.'.join(walked)} is not a section")
    try:
        node[name] = _parse(text)
    except (yaml.YAMLError, ValueError) as e:
        raise InputError(f"--set {key}: the value {text!r} is not valid YAML ({_yaml_problem(e)})") from None


def validate(raw: dict, source: str = "study", reads_data: bool = True) -> StudySpec:
    try:
        return StudySpec.model_validate(raw, context={READS_DATA: reads_data})
    except ValidationError as e:
        raise InputError(f"{source}: {describe(e.errors()[0])}") from None


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
        # section validators name the field inside their section: "storage: ..." under "search"
        field, sep, rest = message.partition(": ")
        if loc and sep and field.replace(".", "").replace("_", "").isalnum():
            return f"{path}.{field}: {rest}"
        return f"{path}: {message}" if loc else message
    got = repr(error["input"])
    return f"{path}: {message} (got {got if len(got) <= 80 else got[:76] + ' ...'})"  # not a megabyte


def _fields_at(loc: list[str]) -> list[str]:
    """Field names of the section at `loc`, stepping through optional sections and dict values."""
    node: Any = StudySpec
    for part in loc:
        node = node.model_fields[part].annotation if part in getattr(node, "model_fields", {}) else node
        while not (isinstance(node, type) and issubclass(node, BaseModel)):
            node = [a for a in get_args(node) if a is not type(None)][-1]  # X of X | None, V of dict[K, V]
    return list(node.model_fields)


def flatten(spec: StudySpec | Recipe) -> dict[str, Any]:
    """`{'train.temperature.start': 1.0, ...}`: one entry per leaf field (the search section stays one entry)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not prefix.startswith("search"):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            out[prefix] = value

    walk("", spec.model_dump())
    return out


EARLY_SIGNAL = ("kl_categorical", "max")  # the rungs' default ranking for a model with a categorical code


def rung_ranking(spec: StudySpec) -> tuple[str, str]:
    """The metric and mode ASHA's rungs rank trials on (search.scheduler)."""
    scheduler, search = spec.search.scheduler, spec.search
    if scheduler.metric:
        return scheduler.metric, scheduler.mode
    return EARLY_SIGNAL if spec.model.categories else (search.metric, search.mode)


def metric_names(spec: StudySpec | Recipe) -> set[str]:
    """The per-epoch metrics a model of this spec reports (see the README's metrics table)."""
    names = {"epoch", "step", "temperature", "train_loss", "train_mi_lower_bound", "images_per_second", "epoch_seconds",
             "recon", "kl_continuous", "kl_categorical", "elbo", "mi_lower_bound"}
    names |= {f"kl_z{i}" for i in range(spec.model.gaussian_dims)}
    if spec.model.categories:
        names |= {"accuracy_hungarian", "accuracy_majority", "nmi", "accuracy_majority_train", "invariance_mi"}
    if spec.model.categories and isinstance(spec, StudySpec) and spec.search and spec.search.bundle \
            and spec.search.replicates > 1:
        names.add(AGREEMENT)  # across a bundle's seeds (bundle.Bundle.add_seed_agreement)
    names |= {"mi_lower_bound_gaussian"} if spec.mi.gaussian else set()
    names |= {"mi_lower_bound_categorical"} if spec.mi.categorical else set()
    return names


def first_change(saved: StudySpec | Recipe, new: StudySpec | Recipe, allowed: set[str] = frozenset()) -> str | None:
    """The first field outside `allowed` whose value differs, as 'path is NEW here but OLD in the saved spec'."""
    old = flatten(saved)
    for key, value in flatten(new).items():
        if key not in allowed and old.get(key) != value:
            return f"{key} is {value!r} here but {old.get(key)!r} in the saved spec"
    return None
