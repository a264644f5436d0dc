"""A config's problems as the plan reports them: ``ConfigError`` (each problem names its
key and the fix) and the schema's verdict in one line (``schema_errors`` around
Snakemake's ``validate``), where Snakemake would print the whole schema after it.
No torch, no other module of ltd: the checks, the Snakefile and ``ltd.config`` use it.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterable


class ConfigError(ValueError):
    """One or more config problems, each naming its key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the config cannot run to the end:\n" + "\n".join(f"  - {p}" for p in problems))


# ---- the schema's verdict, short: Snakemake's validate (which fills the defaults) stays the
# mechanism; its error would print the whole schema (1,400 lines) after the message ----

_TYPES = {"integer": "a whole number", "number": "a number", "string": "a string", "boolean": "true or false",
          "object": "a mapping (key: value lines)", "array": "a list", "null": "null"}


def _json_type(value: Any) -> str:
    """What a YAML value is, in the schema's words (a quoted number is a string)."""
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (dict, "object"),
                    (list, "array"), (type(None), "null")):
        if isinstance(value, t):
            return _TYPES[name]
    return type(value).__name__


def _key(path: Iterable[Any]) -> str:
    """A config key as the checks write it: datasets.cifar10.attack, entries[0]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _closest(word: str, options: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(str(word), [str(o) for o in options], n=3, cutoff=0.6)


def schema_problem(error: Any) -> str:
    """One line for a jsonschema ValidationError: the key (its ``absolute_path``), what was
    written (``instance``), and what the schema wants (``validator``, ``validator_value``),
    with the closest valid names for a misspelt key or choice."""
    key, inst, want = _key(error.absolute_path), error.instance, error.validator_value
    kind = error.validator
    if kind == "additionalProperties" and isinstance(inst, dict):
        props = (error.schema.get("properties") or {}).keys()
        bad = [k for k in inst if k not in props]
        parts = []
        for k in bad:
            close = _closest(k, props)
            where = f"{key}.{k}" if key else str(k)
            parts.append(f"{where}: not a config key"
                         + (f"; did you mean {' or '.join(close)}?" if close else
                            f" (the keys {'of ' + key if key else 'at the top level'}: {', '.join(props)})"))
        return "; ".join(parts)
    if kind == "type":
        names = [want] if isinstance(want, str) else list(want)
        written = f"{key} = {_short(inst)}: " if key else ""
        hint = ""
        if isinstance(inst, str) and set(names) & {"integer", "number"}:
            with contextlib.suppress(ValueError):
                hint = f"; write it without quotes: {int(inst) if 'integer' in names else float(inst)}"
        expected = " or ".join(_TYPES.get(n, n) for n in names)
        return f"{written}{_json_type(inst)} where {expected} is expected{hint}"
    if kind == "enum":
        close = _closest(inst, want) if isinstance(inst, str) else []
        return (f"{key} = {_short(inst)}: not one of {', '.join(map(repr, want))}"
                + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ""))
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"{key} = {_short(inst)}: must be {op} {want}"
    if kind == "pattern":
        return f"{key} = {_short(inst)}: not of the form {want}"
    return f"{key or 'the config'}: {error.message[:300]}"


def _validation_error(exc: BaseException | None) -> Any:
    """The jsonschema ValidationError behind Snakemake's WorkflowError (which keeps only
    its text: the error is the exception it was raised while handling), if any."""
    import jsonschema

    while exc is not None and not isinstance(exc, jsonschema.ValidationError):
        exc = exc.__cause__ or exc.__context__
    return exc


@contextlib.contextmanager
def schema_errors():
    """Around Snakemake's ``validate``: its schema error as a ConfigError of one line
    naming the key (``schema_problem``); any other error as it is."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Snakemake wraps it in a WorkflowError
        error = _validation_error(exc)
        if error is None:
            raise
        raise ConfigError([schema_problem(error)]) from None
