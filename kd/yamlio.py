"""YAML in, with the line number of every key so that errors can point at it."""
from __future__ import annotations

from pathlib import Path

import yaml

from kd.errors import KDError


def _key_lines(node, prefix: str, out: dict[str, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in out:  # YAML itself keeps the last silently; a recipe must not hide one value behind another
                raise KDError(f"{path}:{line}: key '{key}' appears twice (lines {out[key]} and {line}); keep one")
            out[key] = line
            _key_lines(value_node, key + ".", out, path)


def load_mapping(path: str | Path, what: str = "recipe") -> tuple[dict, dict[str, int]]:
    """(mapping, {dotted key: line}) from a YAML file whose top level must be a mapping."""
    path = Path(path)
    if path.is_dir():
        raise KDError(f"{what} {path} is a folder, not a file; give the .yaml file inside it")
    if not path.is_file():
        raise KDError(f"{what} {path} does not exist; check the path (run_kd.py list shows the recipes)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise KDError(f"{what} {path} is not a UTF-8 text file (byte {err.start} cannot be decoded); a {what} is "
                      f"YAML text: save it as UTF-8, or check that you passed the .yaml file and not a checkpoint") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise KDError(f"{path}{line}: not valid YAML ({problem}); fix the syntax there") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KDError(f"{path}: a {what} must be a YAML mapping of key: value lines, got {type(data).__name__}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines, path)
    return data, lines


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
