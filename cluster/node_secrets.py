"""Fetch a Ray node's secrets from AWS Secrets Manager (the cluster launcher's setup command, cluster/aws.yaml).

    python cluster/node_secrets.py --region us-west-2

Uses the node's instance profile (no key anywhere in a file of this repository) and writes, readable by the
node's user only (mode 600):
  ~/.ray/auth_token        the Ray token (secret vmistudy/ray-auth-token: the token as a plain string);
                           with RAY_AUTH_MODE=token, `ray start` and every Ray process read it from there
  ~/.vmistudy/mlflow.env   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (secret vmistudy/mlflow-client:
                           JSON {"username": ..., "password": ...}), sourced before `ray start` so that every
                           trial's MLflow client logs in; MLflow reads these variables itself
Nothing is printed but the paths written.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import boto3

RAY_TOKEN_SECRET = "vmistudy/ray-auth-token"
MLFLOW_SECRET = "vmistudy/mlflow-client"


def write_private(path: Path, text: str) -> None:
    """Create `path` with mode 600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--ray-token-secret", default=RAY_TOKEN_SECRET)
    parser.add_argument("--mlflow-secret", default=MLFLOW_SECRET)
    parser.add_argument("--home", type=Path, default=Path.home())
    args = parser.parse_args(argv)
    client = boto3.client("secretsmanager", region_name=args.region)

    token = client.get_secret_value(SecretId=args.ray_token_secret)["SecretString"].strip()
    if not token:
        raise SystemExit(f"error: secret {args.ray_token_secret} is empty")
    write_private(args.home / ".ray" / "auth_token", token)

    login = json.loads(client.get_secret_value(SecretId=args.mlflow_secret)["SecretString"])
    env = (f"MLFLOW_TRACKING_USERNAME={shlex.quote(login['username'])}\n"
           f"MLFLOW_TRACKING_PASSWORD={shlex.quote(login['password'])}\n")
    write_private(args.home / ".vmistudy" / "mlflow.env", env)
    print(f"wrote {args.home / '.ray' / 'auth_token'} and {args.home / '.vmistudy' / 'mlflow.env'}")


if __name__ == "__main__":
    main()
