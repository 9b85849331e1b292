"""Mesh config files: YAML parsed safely into the plain data `MeshConfig.from_dict` validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from flexmesh.meshcore.config import MeshConfig


def load_mesh_config(path: str | Path) -> MeshConfig:
    """Read a mesh YAML file (`yaml.safe_load`: data only, never code)."""
    with open(path, encoding="utf-8") as f:
        return MeshConfig.from_dict(yaml.safe_load(f) or {})
