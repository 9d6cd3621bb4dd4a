"""Typed job configuration: pydantic models, YAML files and `key.sub=value` overrides."""

from apo_pipeline.config.load import build_config, dump_config, load_config, parse_override, read_yaml
from apo_pipeline.config.schema import (
    JOB_CONFIGS,
    APOConfig,
    BaseJobConfig,
    ConfigError,
    MCPOConfig,
    OnMCPOConfig,
)

__all__ = [
    "JOB_CONFIGS",
    "APOConfig",
    "BaseJobConfig",
    "ConfigError",
    "MCPOConfig",
    "OnMCPOConfig",
    "build_config",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
]
