"""vmistudy: hyperparameter studies of VMI-VAEs, on Ray Tune, Optuna and MLflow."""
import os

# A study's data stay on the machines it runs on: MLflow's telemetry (which its import starts, posting to
# mlflow-telemetry.io) and Ray's usage stats (posted from a local Ray's head) are off unless the user turns them
# on. Set here, by the package's first import, so before either library is imported and before Ray's processes
# start, which inherit it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
