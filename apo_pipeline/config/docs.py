"""Generate docs/configuration.md from the config models, so the reference cannot drift.

`python -m apo_pipeline.config.docs > docs/configuration.md` (or `make docs-config`).
"""

from __future__ import annotations

import inspect
import sys

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from apo_pipeline.config.schema import JOB_CONFIGS, BaseJobConfig

HEADER = """# Configuration reference

Generated from `apo_pipeline/config/` by `make docs-config`; a test fails when it is stale.
Set any key in a YAML file (`--config`), a preset (`--preset`) or on the command line as
`section.key=value` (values are read as YAML: `generation.temperatures=[0.6,1.0]`).
A wrong key, type or combination stops the job before Ray starts, with one line naming the key.
"""


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value is not None else "`None`"


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return (text or str(annotation)).replace("typing.", "").replace("|", "\\|")


def _section_table(model: type[BaseModel], prefix: str) -> list[str]:
    doc = inspect.cleandoc(model.__doc__ or "")
    lines = [f"### `{prefix}`", "", doc, "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}.{name}` | {_type_name(ann)} | {_default(field)} | {desc} |")
    return lines + [""]


def _sections(model: type[BaseModel], skip: set[str]) -> list[tuple[str, type[BaseModel]]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name not in skip:
            out.append((name, ann))
    return out


def render() -> str:
    """The whole reference as Markdown."""
    lines = [HEADER, "## Shared by every job", "", "| key | type | default |", "| --- | --- | --- |"]
    for name, field in BaseJobConfig.model_fields.items():
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            lines.append(f"| `{name}` | {_type_name(ann)} | {_default(field)} |")
    lines.append("")
    for name, section in _sections(BaseJobConfig, skip=set()):
        lines += _section_table(section, name)
    lines += ["## The `loop` block of each job", ""]
    for job, cls in JOB_CONFIGS.items():
        loop = cls.model_fields["loop"].annotation
        lines.append(f"Job `{job}` (`jobs/{job}.py`, default file `jobs/configs/{job}.yaml`):")
        lines.append("")
        lines += _section_table(loop, "loop")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
