"""The documentation holds together: the README stays a front door, every relative link
(and its #anchor) reaches a file and heading that exist, the configuration reference names
every key of the schema, and the "Adding a method" example is the code's (issue 30)."""
import re

import pytest
import yaml

from .conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ *```.*?^ *```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(path):
    """A page without its code blocks (a `#` there is a shell comment, a `[x](y)` code)."""
    return FENCE.sub("", path.read_text())


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to
    `-`; a repeated heading gets -1, -2, ..."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path):
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", t)]


def test_the_pages_have_links_to_check():
    assert len(links(ROOT / "README.md")) >= 15 and links(ROOT / "config" / "README.md")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(path):
    broken = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_anchors_follow_githubs_rule():
    page = ROOT / "docs" / "methods.md"
    assert "martltd-which-terms-take-q_t" in anchors(page) and "adding-a-method" in anchors(page)


def test_the_readme_is_a_front_door():
    """At most about 200 lines (issue 30); the manual is in docs/ and config/README.md."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 210
    for section in ("## Two commands", "## The quick reproduction", "## The paper run", "## Data:", "## Layout",
                    "## Documentation"):
        assert f"\n{section}" in text, section
    assert "make gpu-check" in text


def test_the_configuration_reference_names_every_top_level_key():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    table = (ROOT / "config" / "README.md").read_text().split("## Every key", 1)[1].split("\n## ", 1)[0]
    named = {k for row in re.findall(r"^\| (.+?) \|", table, re.M) for k in re.findall(r"`([a-z_]+)", row)}
    assert set(schema["properties"]) <= named, set(schema["properties"]) - named


def test_adding_a_method_shows_the_registry_and_step_classes_as_they_are():
    from ltd import methods, steps

    page = (ROOT / "docs" / "methods.md").read_text()
    section = page[page.index("## Adding a method"):]
    code = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert len(code) == 2
    table = code[0].split("=", 1)[1]
    shown = dict(re.findall(r'"(\w+)": (\w+)', table))
    assert shown == {kind: cls.__name__ for kind, cls in steps.STEP_CLASSES.items()}
    entry = eval(code[1].strip().rstrip(","), {"Method": methods.Method})  # the docs' own text, no input
    real = methods.METHODS[entry.name]
    assert (entry.label, entry.step, entry.uses_soft_labels, entry.attack, entry.base, entry.awp) == (
        real.label, real.step, real.uses_soft_labels, real.attack, real.base, real.awp)
    assert entry.step in steps.STEP_CLASSES and all(entry.cost(k) == real.cost(k) for k in (0, 5, 10))
    assert real.note.startswith(entry.note.removesuffix("..."))


def test_the_readmes_data_table_is_the_configs():
    """Which tables read which data set, and where it goes: as config/config.yaml (and the
    offline overlay config/cifar10_jpeg.yaml) say."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    jpeg = yaml.safe_load((ROOT / "config" / "cifar10_jpeg.yaml").read_text())["datasets"]["cifar10"]
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Data:"):].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| table") and "`datasets." in line]
    shown = {re.match(r"`datasets\.(\w+)", key).group(1): set(tables.split(", ")) for tables, key, *_ in rows}
    wanted = {}
    for name, table in config["tables"].items():
        wanted.setdefault(table["dataset"], set()).add(name)
    assert shown == wanted
    where = {re.match(r"`datasets\.(\w+)", row[1]).group(1): row[3] for row in rows}
    assert where["imagenet"].startswith(f"`{config['datasets']['imagenet']['path']}/`")
    assert all(f"`data_dir` (`{config['data_dir']}/`)" in where[d] for d in ("cifar10", "cifar100"))
    assert f"`{jpeg['archive']}`" in section and f"`{jpeg['path']}/`" in section
    assert f"`{config['robustbench_model_dir']}/<dataset>/Linf/<name>.pt`" in section


def test_the_demo_page_quotes_the_snapshot_of_table4_as_it_is():
    """docs/demo_results.md's "Today's Table IV" is docs/demo/table4.md's table (the
    snapshot of a real `make demo`), row for row: a rerun that changes the snapshot
    changes the page too. Its caption names the configuration the page describes."""
    snapshot = (ROOT / "docs" / "demo" / "table4.md").read_text()
    caption, table = snapshot.split("\n\n", 1)
    page = (ROOT / "docs" / "demo_results.md").read_text()
    section = page.split("## Today's Table IV", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows == [line for line in table.splitlines() if line.startswith("|")]
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    epochs = demo["train"]["epochs"]
    assert f"{epochs} epochs, batch 64" in caption and "wrn-10-1 for wrn-34-10" in caption
    assert demo["stand_ins"]["archs"]["wrn-34-10"] == "wrn-10-1" and f"for {epochs} epochs" in page
