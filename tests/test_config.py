"""Bad study input through the real CLI: exit status 2, one 'error:' line naming the field, nothing created."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SYNTHETIC, make_spec, raw_study, run_cli
from vmistudy import config
from vmistudy.errors import InputError

SYN = {"data": {"name": "synthetic"}}


def _yaml(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


# id: (study file text, extra CLI args, substrings the error line must contain)
CASES = {
    "unknown-top-level-key": (_yaml({**SYN, "epochz": 3}), [],
                              ["epochz", "unknown key", "allowed here", "data", "model", "train", "mi"]),
    "unknown-nested-key": (_yaml({**SYN, "train": {"temperature": {"strat": 2.0}}}), [],
                           ["train.temperature.strat", "unknown key", "start", "min", "rate", "every"]),
    "negative-lambda": (_yaml({**SYN, "mi": {"lambda_mi": -0.5}}), [], ["mi.lambda_mi", "-0.5"]),
    "temperature-start-zero": (_yaml({**SYN, "train": {"temperature": {"start": 0, "min": 0.5}}}), [],
                               ["train.temperature.start"]),
    "temperature-min-above-start": (_yaml({**SYN, "train": {"temperature": {"start": 1.0, "min": 2.0}}}), [],
                                    ["train.temperature", "min", "start"]),
    "one-category": (_yaml({**SYN, "model": {"categories": 1}}), [], ["model.categories"]),
    "mi-target-outside-latent": (_yaml({**SYN, "model": {"gaussian_dims": 4}, "mi": {"gaussian": [0, 4]}}), [],
                                 ["mi.gaussian", "4", "0..3"]),
    "batch-size-zero": (_yaml({**SYN, "train": {"batch_size": 0}}), [], ["train.batch_size"]),
    "epochs-float": (_yaml({**SYN, "train": {"epochs": 2.5}}), [], ["train.epochs", "2.5"]),
    "epochs-word": (_yaml({**SYN, "train": {"epochs": "three"}}), [], ["train.epochs", "three"]),
    "data-root-missing": (_yaml({"data": {"name": "mnist", "root": "/nonexistent/vmistudy-data"}}), [],
                          ["data", "/nonexistent/vmistudy-data", "does not exist", "data.root"]),
    "yaml-syntax-error": ("data:\n  name: synthetic\ntrain:\n  epochs: 3\n   batch_size: 4\n", [],
                          ["YAML", "line 5"]),
    "empty-file": ("", [], ["empty"]),
    "set-unknown-key": (_yaml(SYN), ["--set", "train.bogus=3"], ["train.bogus", "unknown key"]),
    "set-malformed": (_yaml(SYN), ["--set", "train.epochs"], ["--set", "train.epochs", "key.path=value"]),
}

@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Run every case's CLI once (three at a time; each start imports torch)."""
    root = tmp_path_factory.mktemp("config-cli")

    def one(name):
        text, args, _ = CASES[name]
        folder = root / name
        folder.mkdir()
        study = folder / "study.yaml"
        study.write_text(text)
        out = folder / "x"
        return name, out, run_cli("train", study, "--out", out, *args, cwd=folder)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return {name: (out, proc) for name, out, proc in pool.map(one, CASES)}


@pytest.mark.subprocess
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_error_line(case, cli_results):
    out, proc = cli_results[case]
    expected = CASES[case][2]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert proc.stdout == ""
    assert not out.exists(), "an output folder was created for bad input"
    assert not (out.parent / "runs").exists()


# ------------------------------------------------------------------------------------- config.load in-process

def test_load_applies_typed_nested_overrides(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(_yaml(raw_study(SYNTHETIC)))
    spec = config.load(study, ["mi.lambda_mi=5", "train.epochs=7", "mi.gaussian=[0, 2]", "train.temperature.every=10",
                               "train.temperature.min=0.25", "data.download=true", "name=renamed", "model.backbone=conv",
                               "tracking.uri=null"])
    assert spec.mi.lambda_mi == 5.0 and isinstance(spec.mi.lambda_mi, float)
    assert spec.train.epochs == 7 and isinstance(spec.train.epochs, int)
    assert spec.mi.gaussian == [0, 2]
    assert spec.train.temperature.every == 10 and spec.train.temperature.min == 0.25
    assert spec.train.temperature.start == 1.0  # untouched siblings keep their defaults
    assert spec.data.download is True
    assert spec.name == "renamed" and spec.model.backbone == "conv"
    assert spec.tracking.uri is None
    # values not overridden come from the file
    assert spec.data.train_size == SYNTHETIC["data"]["train_size"] and spec.model.hidden == SYNTHETIC["model"]["hidden"]
    # later overrides win, and the file itself is not modified
    assert config.load(study, ["train.epochs=2", "train.epochs=4"]).train.epochs == 4
    assert config.load(study).train.epochs == SYNTHETIC["train"]["epochs"]


def test_override_creates_missing_sections(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(_yaml(SYN))
    spec = config.load(study, ["model.categories=null", "mi.categorical=false", "mi.gaussian=[3]"])
    assert spec.model.categories is None and spec.mi.categorical is False and spec.mi.gaussian == [3]


def test_train_quick_study_loads(mnist_root):
    spec = config.load(REPO / "studies" / "train_quick.yaml")
    assert spec.name == "train-quick"
    assert spec.data.name == "mnist" and spec.data.subset == 10000 and spec.data.test_subset == 2000
    assert spec.model.gaussian_dims == 16 and spec.model.categories == 10
    assert spec.mi.lambda_mi == 5.0 and spec.mi.categorical
    assert spec.data.resolved_root() == Path(os.environ[config.DATA_ENV])


def test_data_root_resolution_order(tmp_path, monkeypatch):
    (tmp_path / "a" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "b" / "MNIST" / "raw").mkdir(parents=True)
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "a"))
    assert config.validate({"data": {"name": "mnist"}}).data.resolved_root() == tmp_path / "a"
    spec = config.validate({"data": {"name": "mnist", "root": str(tmp_path / "b")}})
    assert spec.data.resolved_root() == tmp_path / "b"
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(InputError, match="missing"):
        config.validate({"data": {"name": "mnist"}})
    # download on, or synthetic data, need no folder
    assert config.validate({"data": {"name": "mnist", "download": True}}).data.download
    assert config.validate({"data": {"name": "synthetic"}}).data.name == "synthetic"
    # an image folder needs the root itself
    with pytest.raises(InputError, match="data"):
        config.validate({"data": {"name": "image_folder", "root": str(tmp_path / "nowhere")}})
    assert config.validate({"data": {"name": "image_folder", "root": str(tmp_path / "a")}}).data.name == "image_folder"


def test_errors_are_one_line_config_errors():
    with pytest.raises(InputError) as info:
        config.validate({**SYN, "train": {"lr": 0}}, source="here.yaml")
    message = str(info.value)
    assert message.startswith("here.yaml: train.lr:") and "\n" not in message
    with pytest.raises(InputError, match=r"model: the latent is empty"):
        config.validate({**SYN, "model": {"gaussian_dims": 0, "categories": None}, "mi": {"categorical": False}})
    with pytest.raises(InputError, match=r"mi: no MI target"):
        config.validate({**SYN, "mi": {"categorical": False}})
    with pytest.raises(InputError, match=r"mi.gaussian: indices must be distinct"):
        config.validate({**SYN, "mi": {"gaussian": [1, 1]}})


def test_seed_agreement_is_a_metric_of_bundles_of_several_seeds():
    bundled = make_spec(search={"metric": "seed_agreement", "bundle": True, "replicates": 2})
    assert "seed_agreement" in config.metric_names(bundled)
    assert "seed_agreement" not in config.metric_names(bundled.recipe)  # a single model has no seeds to agree with


def test_defaults_and_flatten():
    spec = make_spec(search={"space": {"mi.lambda_mi": {"loguniform": [0.1, 10.0]}}})
    flat = config.flatten(spec)
    assert flat["train.temperature.start"] == spec.train.temperature.start
    assert flat["mi.lambda_mi"] == SYNTHETIC["mi"]["lambda_mi"]
    assert flat["search"]["space"]["mi.lambda_mi"]["loguniform"] == (0.1, 10.0)
    assert not any(k.startswith("search.") for k in flat)
    assert all(not isinstance(v, dict) for k, v in flat.items() if k != "search")
    # a round trip through model_dump validates to the same spec (what resuming relies on)
    assert config.validate(spec.model_dump()) == spec
    defaults = config.validate(SYN)
    assert defaults.model.gaussian_dims == 16 and defaults.model.categories == 10
    assert defaults.mi.lambda_mi == 0.0 and defaults.train.beta == 1.0
    assert defaults.train.temperature.start == 1.0 and defaults.train.temperature.min == 0.5
    assert math.isclose(defaults.train.temperature.rate, 3e-4)


@pytest.mark.parametrize("raw, expected", [
    ({**SYN, "model": {"hiden": 3}}, "model.hiden: unknown key; allowed here: backbone, hidden,"),
    ({**SYN, "train": {"temperature": {"start": -1.0}}}, "train.temperature.start: Input should be greater than 0"),
    ({**SYN, "mi": {"gaussian": [-1]}}, "mi.gaussian: index -1 is outside the Gaussian latent"),
    ({"train": {"epochs": 1}}, "data: required"),
    ({**SYN, "train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
    ({**SYN, "train": {"epochs": True}}, "train.epochs: Input should be a valid integer"),
    ({**SYN, "data": {"name": "cifar"}}, "data.name:"),
    ({**SYN, "model": {"backbone": "resnet"}}, "model.backbone:"),
    ({**SYN, "model": {"categories": None}}, "mi.categorical: the model has no categorical part"),
    ({**SYN, "search": {"metrik": "elbo"}}, "search.metrik: unknown key; allowed here: metric, mode,"),
    ({**SYN, "model": {"categories": None}, "mi": {"categorical": False, "gaussian": [0], "invariance": {"weight": 1}}},
     "mi.invariance.weight: the invariance term compares categorical codes; the model has none"),
    ({**SYN, "mi": {"invariance": {"rotate": 200}}}, "mi.invariance.rotate: Input should be less than or equal to 180"),
    ({**SYN, "mi": {"invariance": {"weight": 1}}, "search": {"bundle": True}},
     "search.bundle: bundles do not train the invariance term (mi.invariance.weight)"),
    ({**SYN, "train": {"capacity": {"categorical": {"cap": 2.5}}}},
     "train.capacity.categorical.cap: KL to the uniform prior is at most log K = 2.303 nats"),
    ({**SYN, "model": {"categories": None}, "mi": {"categorical": False, "gaussian": [0]},
      "train": {"capacity": {"categorical": {"cap": 1.0}}}},
     "train.capacity.categorical.cap: the model has no categorical part"),
    ({**SYN, "model": {"prior": "mixture", "gaussian_dims": 0}}, "model.prior: mixture needs gaussian_dims >= 1"),
    ({**SYN, "model": {"prior": "mixture"}, "mi": {"gaussian": [0]}},
     "mi.gaussian: under model.prior mixture the entropy of z has no closed form"),
    ({**SYN, "model": {"prior": "gmm"}}, "model.prior:"),
    ({**SYN, "model": {"prior_variance": "learned"}},
     "model.prior_variance: learned variances are the mixture prior's"),
    ({**SYN, "model": {"prior": "mixture", "prior_variance": "free"}}, "model.prior_variance:"),
    ({**SYN, "train": {"epochs": 3, "pretrain_epochs": 3}},
     "train.pretrain_epochs: must be below train.epochs (3): the epochs after it train the method, got 3"),
    ({**SYN, "model": {"prior": "mixture"}, "train": {"epochs": 3, "pretrain_epochs": 1}},
     "model.prior_spread: with train.pretrain_epochs the means are held at the origin"),
    ({**SYN, "train": {"capacity": {"gaussian": {"cap": 5.0, "gamma": 0}}}},
     "train.capacity.gaussian.gamma: Input should be greater than 0"),
    ({**SYN, "search": {"space": {"mi.lambda_mi": {"loguniform": [1.0, 2.0], "lo": 1}}}},
     "search.space.mi.lambda_mi.lo: unknown key; allowed here: uniform, loguniform, int, choice"),
    ({**SYN, "search": {"scheduler": {"metric": "accuracy"}}},
     "search.scheduler.metric: accuracy is not a per-epoch metric of this model; allowed: accuracy_hungarian,"),
    ({**SYN, "search": {"metric": "seed_agreement", "replicates": 3}},
     "search.metric: seed_agreement compares a configuration's seeds in one trial bundle; it needs search.bundle"),
    ({**SYN, "search": {"metric": "seed_agreement", "bundle": True}},  # one seed: nothing to agree with
     "search.metric: seed_agreement compares a configuration's seeds in one trial bundle"),
])
def test_validate_names_the_field(raw, expected):
    with pytest.raises(InputError) as info:
        config.validate(raw, source="s.yaml")
    assert str(info.value).startswith(f"s.yaml: {expected}"), str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("data: {name: synthetic}\n\nmi: {lambda_mi: [1, 2}\n", "line 3"),
    ("# nothing here\n", "empty"),
    ("- data\n- model\n", "must be a mapping"),
])
def test_read_yaml_errors(tmp_path, text, expected):
    with pytest.raises(InputError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    study = tmp_path / "s.yaml"
    study.write_text(text)
    with pytest.raises(InputError, match=expected):
        config.load(study)


@pytest.mark.parametrize("item", ["=3", "novalue", ""])
def test_malformed_overrides(tmp_path, item):
    study = tmp_path / "s.yaml"
    study.write_text(_yaml(SYN))
    with pytest.raises(InputError, match="expected key.path=value"):
        config.load(study, [item])


def test_override_errors(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(_yaml({**SYN, "train": {"epochs": 2}}))
    with pytest.raises(InputError, match=r"--set mi.gaussian: the value '\[0,' is not valid YAML"):
        config.load(study, ["mi.gaussian=[0,"])
    with pytest.raises(InputError, match=r"--set train.epochs.max: train.epochs is not a section"):
        config.load(study, ["train.epochs.max=3"])
