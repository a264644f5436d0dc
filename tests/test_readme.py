"""What README.md and the pages it moved into docs/ and config/README.md tell a user to
type runs as written: every shell command of their code blocks, in a copy of the project (its virtualenv linked), in its dry-run form where it
would train (`-n`; a `make` target as `make -n`, then the Snakemake command it runs with
`-n`). A command that cannot run here is listed in OFFLINE with the reason, and a command
neither run nor listed fails the test. The numbers the docs quote from `snakemake budget`
are compared with what it computes."""
import re
import shlex
import shutil
import subprocess

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
CONFIG_README = ROOT / "config" / "README.md"
# The README and the pages its manual moved to (issue 30): every command in them is run here.
# docs/performance.md holds prepared GPU-machine runs (no virtualenv there).
DOCS = [README, CONFIG_README, *(ROOT / "docs" / f"{page}.md" for page in (
    "install", "demo_results", "quick", "running", "slurm", "data", "published", "comparable_rows", "methods",
    "precision", "fp16_study"))]
SKIP = {".git", ".venv", "results", ".snakemake", "data", "models", ".pytest_cache", "my.yaml"}
OFFLINE = {  # command prefix -> why it is not run here
    "nvidia-smi": "needs an NVIDIA driver (no GPU here)",
    ".venv/bin/python -m pip install --force-reinstall": "downloads torch from PyTorch's index (no internet in CI)",
}
MAKE_DRY_ONLY = {  # make targets run as `make -n` only (no Snakemake command, or not even as a dry run)
    "venv": "the virtualenv exists already (make test made it)",
    "test": "the test suite itself",
    "report": "renders the outputs of a finished demo (none here); `make -n report` runs",
}


def blocks(text, lang):
    return re.findall(rf"^ *```{lang}\n(.*?)^ *```", text, re.M | re.S)


def commands(text):
    """Every shell command of the README's bash blocks (comments dropped, continuations joined)."""
    out = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme") / "ltd"
    shutil.copytree(ROOT, d, ignore=lambda dirpath, names: [
        n for n in names if n == "__pycache__" or (dirpath == str(ROOT) and n in SKIP)])
    (d / ".venv").symlink_to(ROOT / ".venv")
    # ../shared beside the copy, as beside a clone (config/cifar10_jpeg.yaml's archive is there).
    # No data/ (nor ImageNet in it), no models/: a newcomer's clone, planned before the data is there.
    (d.parent / "shared").symlink_to(ROOT.parent / "shared")
    assert not (d / "data").exists() and not (d / "models").exists()
    return d


def run(clone, cmd, timeout=300):
    return subprocess.run(cmd, cwd=clone, shell=True, capture_output=True, text=True, timeout=timeout)


def dry(cmd):
    """A Snakemake command in its dry-run form: -n right after the program (targets stay first)."""
    words = shlex.split(cmd)
    return cmd if "-n" in words else shlex.join([words[0], "-n", *words[1:]])


def docs_text():
    return "\n".join(path.read_text() for path in DOCS)


def test_every_readme_command_runs_as_written(clone):
    text = docs_text()
    cmds = commands(text)
    assert len(cmds) >= 10, cmds
    # The published example's my.yaml is the docs' YAML block (docs/published.md).
    (clone / "my.yaml").write_text(next(b for b in blocks(text, "yaml") if "published:" in b))
    ran, failed = [], []
    for cmd in cmds:
        if any(cmd.startswith(p) for p in OFFLINE):
            continue
        words = shlex.split(cmd)
        if words[0] == "make":
            p = run(clone, f"make -n {shlex.join(words[1:])}")
            ran.append(f"make -n {shlex.join(words[1:])}")
            if p.returncode != 0:
                failed.append((cmd, p.stdout + p.stderr))
                continue
            if words[1] in MAKE_DRY_ONLY:
                continue
            for line in p.stdout.splitlines():  # the Snakemake command the target runs
                if "bin/snakemake " in line:
                    sm = dry(line.split("PATH=", 1)[-1].split(" ", 1)[1] if line.startswith("PATH=") else line)
                    q = run(clone, sm)
                    ran.append(sm)
                    if q.returncode != 0:
                        failed.append((sm, q.stdout[-2000:] + q.stderr[-2000:]))
            continue
        if words[0] == ".venv/bin/snakemake":
            if "published" in words:  # the checkpoints are not here: a real run stops before any job, saying
                p = run(clone, cmd)   # where they go (and downloads nothing)
                out = p.stdout + p.stderr
                assert p.returncode != 0 and "is not at models/cifar10/Linf/Chen2021LTD_WRN34_20.pt" in out \
                    and "robustbench.utils.load_model" in out, out[-3000:]
                assert "Finished job" not in out and not (clone / "data").exists(), out[-3000:]  # no download
                p = run(clone, dry(cmd))  # and its plan lists the evaluations, then says the same
                out = p.stdout + p.stderr
                assert p.returncode == 0 and out.count("is not at models/cifar10/Linf/Chen2021LTD_WRN34_20.pt") == 1 \
                    and "rule evaluate_published:" in out, out[-3000:]
                ran.append(cmd)
                ran.append(dry(cmd))
                continue
            cmd = dry(cmd)
        elif not cmd.startswith(".venv/bin/python -c"):
            failed.append((cmd, "neither run by this test nor listed in OFFLINE"))
            continue
        p = run(clone, cmd)
        ran.append(cmd)
        if p.returncode != 0:
            failed.append((cmd, p.stdout[-2000:] + p.stderr[-2000:]))
    print("\n".join(ran))
    assert not failed, "\n\n".join(f"$ {c}\n{o}" for c, o in failed)
    assert ".venv/bin/snakemake -n table4 --cores all --resources gpu=4" in ran, ran  # the GPU command, target first


def test_no_documented_command_names_a_target_after_resources():
    """Snakemake reads every word after --resources as a resource."""
    bad = re.compile(r"snakemake[^`\n]* --resources( +\w+=[^\s`]+)+ +[a-z]\w*(\s|$)")
    for path in (README, CONFIG_README, ROOT / "Makefile", *ROOT.glob("profiles/*/config.yaml"),
                 *ROOT.glob("docs/*.md")):
        for line in path.read_text().splitlines():
            assert not bad.search(line), (path, line)


def test_budget_figures_in_the_docs_are_what_it_computes(paper_config):
    """README, docs/methods.md and docs/performance.md quote `snakemake budget` (ltd.budget.estimate)."""
    from ltd import budget

    total = budget.estimate(paper_config).set_index("table").loc["total"]
    jobs = budget.job_tables(paper_config)
    table7 = sum(budget.job_cost(paper_config, j).gpu_hours for j, t in jobs.items() if t == ["table7"])
    readme, perf = README.read_text(), (ROOT / "docs" / "performance.md").read_text()
    methods = (ROOT / "docs" / "methods.md").read_text()
    hours = round(total["total GPU-h"])
    assert f"about {hours} H100/H200-hours for everything with table7" in readme, hours
    assert f"{round(table7)} of the {hours} GPU-hours `snakemake budget` gives" in methods, (table7, hours)
    assert (f"{round(total['train GPU-h'])} GPU-h of training, {round(total['eval GPU-h'])} of evaluation, "
            f"**{hours} GPU-h** in all") in " ".join(perf.split()), total
