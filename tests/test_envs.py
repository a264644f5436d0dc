"""The conda environments (envs/*.yaml) agree with requirements.txt, and every rule
that runs code names one of them, so `snakemake --sdm conda` works on a cluster that
does not share the virtualenv."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
# Only the training/evaluation jobs need these (data sets, AutoAttack, event files).
NOT_FOR_REPORTS = {"torchvision", "pyautoattack", "scikit-learn", "tensorboard"}
SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==?|>=|<=|~=|>|<)?\s*([^\s#;]*)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(spec: str) -> tuple[str, str, str]:
    name, op, version = SPEC.match(spec.strip()).groups()
    return norm(CONDA_TO_PYPI.get(name.lower(), name)), op or "", version


def requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, op, version = parse(line)
            assert op == "==", f"requirements.txt pins exactly: {line}"
            pins[name] = version
    return pins


def env_specs(path: Path) -> tuple[list[str], list[str]]:
    """(conda specs, pip specs) of an environment file."""
    deps = yaml.safe_load(path.read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = [s for d in deps if isinstance(d, dict) for s in d.get("pip", [])]
    return conda, pip


def test_env_files_exist():
    assert {p.name for p in ENV_FILES} >= {"torch.yaml", "report.yaml"}


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(path):
    pins = requirements()
    conda, pip = env_specs(path)
    python = [parse(s) for s in conda if parse(s)[0] == "python"]
    assert python and all(v.startswith("3.11") for _, _, v in python), "Python 3.11, as the Makefile's"
    if pip:
        assert "pip" in [parse(s)[0] for s in conda], "conda needs `- pip` to install the pip section"
    # Snakemake copies the env file into .snakemake/conda/ before creating it, so a local
    # path (`-e ..`) would resolve there: the project comes from the workflow folder instead.
    assert not [s for s in pip if s.startswith(("-e", "--editable", ".", "/", "file:"))]
    seen = {}
    for spec in conda + [s for s in pip if not s.startswith("-")]:
        name, op, version = parse(spec)
        if name in ("python", "pip"):
            continue
        assert name in pins, f"{path.name}: {spec} is not in requirements.txt (pin it there first)"
        assert (op, version) in {("==", pins[name]), ("=", pins[name])}, \
            f"{path.name}: {spec} but requirements.txt has {name}=={pins[name]}"
        assert name not in seen, f"{path.name}: {name} listed twice"
        seen[name] = version

    # Every library dependency of ltd (pyproject) is there, less what report jobs never import.
    needed = {parse(d)[0] for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    if path.name == "report.yaml":
        needed -= NOT_FOR_REPORTS
    assert needed <= set(seen), f"{path.name} lacks {sorted(needed - set(seen))}"


# Loads the workflow with Snakemake's own API in a child process (it changes directory,
# sys.path and logging), so `use rule ... with:` inheritance and included files are
# resolved exactly as for a run; prints each rule's action and conda directive.
LOAD_RULES = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings

root = Path(sys.argv[1])
with SnakemakeApi(OutputSettings(quiet=True)) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=root / "Snakefile", workdir=root)._workflow
    rules = {r.name: {"runs_code": any(getattr(r, a, None) for a in ("script", "shellcmd", "wrapper", "notebook")),
                      "conda": None if r.conda_env is None else str(r.conda_env),
                      "basedir": r.basedir.get_path_or_uri(secret_free=True)}
             for r in workflow.rules}
print("RULES=" + json.dumps(rules))
"""


def load_rules(root: Path = ROOT) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD_RULES, str(root)], capture_output=True, text=True,
                          timeout=300, cwd=root)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RULES=")]
    assert proc.returncode == 0 and lines, f"could not load the workflow:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RULES="):])


def test_every_rule_names_an_existing_env_file():
    rules = load_rules()
    code_rules = {name: r for name, r in rules.items() if r["runs_code"]}
    assert code_rules, "no rule with a script/shell action found: the loader is broken"
    missing = sorted(name for name, r in code_rules.items() if not r["conda"])
    assert not missing, f"rules without a `conda:` directive: {missing}"
    for name, r in code_rules.items():
        # As Snakemake resolves it: relative to the folder of the file that defines the rule.
        env = (Path(r["basedir"]) / r["conda"]).resolve()
        assert env.suffix in (".yaml", ".yml") and env.is_file(), f"rule {name}: env file {env} does not exist"
        assert env.parent == ROOT / "envs", f"rule {name}: {env} is not one of envs/*.yaml"
