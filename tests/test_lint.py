"""Lint is part of the test command: Snakemake's own linter, snakefmt and ruff (pyflakes,
import order; pyproject.toml) must be clean."""
import shutil
import subprocess
import sys

from .conftest import ROOT
from .private_names import private_names


def test_snakemake_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out


def test_snakefmt_is_clean():
    """The Snakefile and rules/*.smk as snakefmt writes them (settings: pyproject.toml)."""
    snakefmt = shutil.which("snakefmt") or str(ROOT / ".venv" / "bin" / "snakefmt")
    proc = subprocess.run([snakefmt, "--check", "--diff", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    proc = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_planning_imports_no_torch():
    """What the Snakefile and rules/common.smk import must not pull torch in: planning
    `snakemake -n all` on a login node stays a matter of seconds."""
    code = ("import sys; import ltd.checks, ltd.experiments, ltd.files, ltd.methods, ltd.budget; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_the_library_never_imports_the_jobs_layer():
    """Data flows one way: ltd/jobs/ (what the rules call) imports the library, never the reverse."""
    import re

    for path in (ROOT / "ltd").rglob("*.py"):
        if "jobs" in path.relative_to(ROOT / "ltd").parts:
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(\.+jobs|ltd\.jobs)\b", text, re.M), path


def test_no_module_of_the_library_uses_another_modules_private_name():
    """A leading underscore is a module's own: the library, its jobs and the workflow
    scripts reach each other through public names only."""
    bad = {}
    for path in sorted([*(ROOT / "ltd").rglob("*.py"), *(ROOT / "workflow_scripts").glob("*.py")]):
        rel = path.relative_to(ROOT)
        package = ".".join(rel.parts[:-1]) if rel.parts[0] == "ltd" else None
        own = ".".join([*rel.parts[:-1], rel.stem])
        names = [n for n in private_names(path, package) if not n.startswith(f"{own}:")]
        if names:
            bad[str(rel)] = names
    assert not bad, f"private names of another module: {bad}"


def test_the_private_name_check_reads_relative_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from .train import _Totals, fit\nfrom . import data\nfrom ..jobs import common\n"
                 "data._shard(0, 1)\ncommon._spec\n")
    assert sorted(private_names(f, "ltd.jobs")) == sorted(["ltd.jobs.train: _Totals", "data._shard", "common._spec"])


def test_no_file_outside_the_tests_is_over_500_lines():
    """A module that outgrows 500 lines holds more than one concern (issue 29): split it
    by concern, as ltd/data.py and ltd/image_files.py are."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    long = {}
    for name in files:
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        try:
            n = len(path.read_text().splitlines())
        except UnicodeDecodeError:  # figures and other binaries
            continue
        if n > 500:
            long[name] = n
    assert not long, long
