"""Mesh config files: YAML parsed safely into the plain data `MeshConfig.from_dict` validates."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import yaml

from flexmesh.meshcore.config import MeshConfig

DEFAULT_MODELS_DIR = Path(platformdirs.user_cache_dir("flexmesh")) / "models"
"""Where models live (and demo models are built) when a config names no `models_dir`."""


def load_mesh_config(path: str | Path) -> MeshConfig:
    """Read a mesh YAML file (`yaml.safe_load`: data only, never code)."""
    with open(path, encoding="utf-8") as f:
        return MeshConfig.from_dict(yaml.safe_load(f) or {})


def model_folders(config: MeshConfig) -> dict[str, Path]:
    """Each model's local folder: its `path`, else `<models_dir>/<name>` (may not exist)."""
    root = Path(config.models_dir or DEFAULT_MODELS_DIR).expanduser()
    return {m.name: Path(m.path).expanduser() if m.path else root / m.name for m in config.models}
