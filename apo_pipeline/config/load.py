"""Load a job config: defaults <- YAML file <- preset <- `key.sub=value` overrides, validated in one go.

Every failure is a `ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from apo_pipeline.config.schema import BaseJobConfig, ConfigError

C = TypeVar("C", bound=BaseJobConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=1e-5` -> (["a", "b"], 1e-05). The value is read as YAML, so lists and booleans work."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"{text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc.__class__.__name__})") from exc
    return parts, value


def _set_path(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`; a missing file or a non-mapping is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return data


def _known_keys(model: type[BaseModel], parts: tuple) -> list[str]:
    """The field names valid at the location of `parts` (for 'did you mean')."""
    for part in parts:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_error(cls: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(cls, loc[:-1]), n=1)
        hint = f" (did you mean {'.'.join(loc[:-1] + (close[0],))!r}?)" if close else ""
        return f"{key}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg = f"{msg} (got {err['input']!r})"
    if ": " in msg and err["type"] == "value_error":
        inner_key, _, inner_msg = msg.partition(": ")
        return f"{'.'.join(loc + (inner_key,)) if loc else inner_key}: {inner_msg}"
    return f"{key or '<config>'}: {msg}"


def build_config(cls: type[C], tree: dict) -> C:
    """Validate a nested dict into `cls`, turning pydantic's report into one line naming the key."""
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"config error: {_format_error(cls, exc)}") from None


def load_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    preset: str | Path | None = None,
) -> C:
    """Defaults of `cls`, then the YAML file, then the preset file, then `key=value` overrides."""
    tree: dict = read_yaml(config_file) if config_file else {}
    if preset:
        tree = _merge(tree, read_yaml(preset))
    for text in overrides or []:
        parts, value = parse_override(text)
        _set_path(tree, parts, value)
    return build_config(cls, tree)


def dump_config(cfg: BaseJobConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
