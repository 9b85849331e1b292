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
    """Each model's local folder (may not exist): `<models_dir>/<name>` without a `path`;
    `<models_dir>/<path>` when `path` is a bare folder name (`demo-small`: a quantised copy
    loads the same checkpoint as the model it copies); else `path` itself."""
    root = Path(config.models_dir or DEFAULT_MODELS_DIR).expanduser()

    def folder(name: str, path: str) -> Path:
        if not path:
            return root / name
        if "/" not in path and "\\" not in path and not path.startswith("~"):
            return root / path
        return Path(path).expanduser()

    return {m.name: folder(m.name, m.path) for m in config.models}
