"""Which private names of ``ltd`` a file uses: ``from ltd... import _x`` (or, inside the
package, ``from .x import _y``), ``import ltd._x`` and ``<ltd module>._y``."""
import ast
from pathlib import Path


def _absolute(node: ast.ImportFrom, package: str | None) -> str:
    """The module an import names; a relative one resolved against ``package`` (dotted)."""
    if not node.level:
        return node.module or ""
    base = (package or "").split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_names(path: Path, package: str | None = None) -> list[str]:
    """``package``: the dotted package ``path`` is in (``ltd``, ``ltd.jobs``), for its relative imports."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if module.split(".")[0] != "ltd":
                continue
            found += [f"{module}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__future__"]
            found += [module for part in module.split(".") if part.startswith("_") and not part.startswith("__")]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ltd":
                    found += [a.name for part in a.name.split(".") if part.startswith("_") and not part.startswith("__")]
                    modules.add((a.asname or a.name).split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, (ast.Name, ast.Attribute)) and ast.unparse(node.value).split(".")[0]
                in modules):
            found.append(ast.unparse(node))
    return found
