"""YAML files in, typed frozen dataclasses out: the loader every YAML file of ours goes through
(config, policy, web config), with errors located to file, line and key.

Field metadata may carry `check`/`expected` (validate, and say what is valid), `parse`
(text → value, ValueError if invalid), `build` (node → value, for structures the generic walk
does not know) and `secret` (never repeat the value in an error).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from auditd.config import yamltext

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration file that cannot be used, located to file, line and key."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        # One line whatever the file holds: a key or value may carry a newline or a control.
        key, message = _printable(key), _printable(message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def resolve_path(value: str, config_file: Path | None) -> Path:
    """A file named in the config: relative names are relative to the config file's directory
    (the working directory when running on built-in defaults)."""
    path = Path(value)
    return path if path.is_absolute() or config_file is None else config_file.parent / path


def read(path: Path) -> str:
    """A YAML file's text; raises ConfigError naming the file (and the line, for bad bytes).
    Never blocks on a FIFO or a device, never reads more than yamltext.MAX_FILE_BYTES."""
    try:
        return yamltext.read(path)
    except yamltext.YamlTextError as exc:
        raise ConfigError(str(path), exc.line, "", exc.message) from exc


def compose(text: str, name: str) -> yaml.Node | None:
    """The YAML node tree (marks kept for error lines); None for an empty document. Bounded in
    depth, size and number lengths (yamltext); every error is a ConfigError with a line."""
    try:
        return yamltext.compose(text)
    except yamltext.YamlTextError as exc:
        raise ConfigError(name, exc.line, "", exc.message) from exc


def build(cls: type[_T], node: yaml.Node, file: str, prefix: str = "") -> _T:
    """A dataclass from a YAML mapping node. Field metadata may carry `check`/`expected`
    (validate), `parse` (text → value, ValueError if invalid) and `build` (node → value, for
    structures the generic walk does not know); for tuple fields they apply to each item."""
    built: _T = _build(cls, node, file, prefix)
    return built


def scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, typed by YAML's rules (int, float, bool, null, str)."""
    # A bare constructor: no reader or scanner to set up for each value (learned policies
    # hold thousands of them).
    return yaml.constructor.SafeConstructor().construct_object(node)


def _build(cls: type[Any], node: yaml.Node, file: str, prefix: str) -> Any:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            file, line, prefix or "(top level)", "expected a mapping of keys to values"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        key_line = key_node.start_mark.line + 1
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(file, key_line, dotted, f"unknown key; valid keys here: {valid}")
        if key in values:
            raise ConfigError(file, key_line, dotted, "given twice")
        values[key] = _value(hints[key], fields[key], value_node, file, dotted)
    for name, fld in fields.items():
        no_default = fld.default is dataclasses.MISSING
        if name not in values and no_default and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(file, line, f"{prefix}.{name}" if prefix else name, "missing")
    return cls(**values)


def _value(hint: Any, fld: dataclasses.Field[Any], node: yaml.Node, file: str, key: str) -> Any:
    line = node.start_mark.line + 1
    inner = _optional_of(hint)
    if inner is not None:
        if isinstance(node, yaml.ScalarNode) and scalar(node) is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or "parse" in fld.metadata:
            hint = inner
    item = _tuple_item(hint)
    if item is not None:
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(file, line, key, f"expected a list, got {_got(node)}")
        return tuple(_value(item, fld, n, file, f"{key}[{i}]") for i, n in enumerate(node.value))
    if (build_value := fld.metadata.get("build")) is not None:
        return build_value(node, file, key)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), node, file, key)
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(file, line, key, f"expected {_describe(hint)}, got a {_node_kind(node)}")
    value = scalar(node)
    if (parse := fld.metadata.get("parse")) is not None:
        try:
            value = parse(value)
        except ValueError:
            raise ConfigError(
                file, line, key, f"expected {fld.metadata['expected']}, got {_got(node)}"
            ) from None
    else:
        value = _coerce(hint, value, file, line, key)
    check = fld.metadata.get("check")
    if check is not None and not check(value):
        # A misplaced secret (a password where a reference belongs) must not reach the logs.
        got = "a value not repeated here" if fld.metadata.get("secret") else repr(value)
        raise ConfigError(file, line, key, f"expected {fld.metadata['expected']}, got {got}")
    return value


def _coerce(hint: Any, value: Any, file: str, line: int, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                file, line, key, f"expected one of {', '.join(choices)}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    # bool is an int in Python; YAML's `yes` must not pass for a number, nor 1 for a switch.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(
        file, line, key, f"expected {_describe(hint)}, got {_yaml_type(value)} {value!r}"
    )


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _node_kind(node: yaml.Node) -> str:
    return "mapping" if isinstance(node, yaml.MappingNode) else "list"


def _got(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        value = scalar(node)
        return f"{_yaml_type(value)} {value!r}"
    return f"a {_node_kind(node)}"


def _optional_of(hint: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _tuple_item(hint: Any) -> Any:
    """T for `tuple[T, ...]` (a YAML list), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )
