# Config -> targets. Paths come from ltd.experiments; no rule builds a run path by hand.
from ltd import experiments as ex
from ltd.checkpoint import load_json

R = f"results/{config['run']}"
DATASET = config["dataset"]["name"]
DATA_JSON = f"{R}/data/{DATASET}.json"
TEACHER = ex.teacher(config)
GPU = 0 if config["device"] == "cpu" else 1


def run_path(run, filename):
    return f"{R}/{run.dir}/{filename}"


def res(kind):
    """Cluster resources of a job class (mem_mb, runtime in minutes), from config."""
    return config["resources"][kind]


# Run names are parsed back into runs by the scripts; keep wildcards within one path part.
wildcard_constraints:
    name="[^/]+",
    T="[0-9.]+",
    group="[^/]+",
