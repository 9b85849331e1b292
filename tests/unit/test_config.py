from __future__ import annotations

from pathlib import Path

import pytest

from flexmesh.launch.config_file import load_mesh_config
from flexmesh.meshcore.config import EngineConfig, MeshConfig
from flexmesh.meshcore.speculation import propose_prompt_lookup

REPO = Path(__file__).resolve().parents[2]


def test_deploy_configs_load() -> None:
    for path in sorted((REPO / "deploy" / "configs").glob("*.yaml")):
        cfg = load_mesh_config(path)
        assert cfg.models


def test_from_dict_builds_nested_and_rejects_unknown_keys() -> None:
    cfg = MeshConfig.from_dict(
        {"models": [{"name": "a"}, {"name": "b"}], "engine": {"max_num_seqs": 4}}
    )
    assert [m.name for m in cfg.models] == ["a", "b"] and cfg.engine.max_num_seqs == 4
    with pytest.raises(ValueError, match="bogus: unknown key"):
        MeshConfig.from_dict({"engine": {"bogus": 1}})
    with pytest.raises(ValueError, match="engine.max_num_seqs: must be int"):
        MeshConfig.from_dict({"engine": {"max_num_seqs": "x"}})


def test_validation_names_field_and_value() -> None:
    with pytest.raises(ValueError, match=r"engine.block_size_tokens: must be > 0, got 0"):
        EngineConfig(block_size_tokens=0)
    with pytest.raises(ValueError, match="models\\[\\].name: must be unique"):
        MeshConfig.from_dict({"models": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="gateway.max_migrations: must be >= 0, got -1"):
        MeshConfig.from_dict({"gateway": {"max_migrations": -1}})
    with pytest.raises(ValueError, match="gateway.tls_key_file: must be set together"):
        MeshConfig.from_dict({"gateway": {"tls_cert_file": "cert.pem"}})


def test_a_route_variant_must_be_resident() -> None:
    models = [{"name": "demo-small"}, {"name": "demo-large"}]
    chat = {"model": "small", "strategy": "none", "spillable": True, "variant": "demo-small-q8"}
    routing = {"routes": {"chat": chat}}
    with pytest.raises(ValueError, match="routing.routes\\[\\].variant: must be a resident"):
        MeshConfig.from_dict({"models": models, "routing": routing})
    cfg = MeshConfig.from_dict({"models": [*models, {"name": "demo-small-q8"}], "routing": routing})
    assert cfg.routing.variants() == {"demo-small-q8": "small"}


def test_prompt_lookup_proposes_continuation_of_latest_match() -> None:
    tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3, 6, 7, 1, 2, 3]
    assert propose_prompt_lookup(tokens, 3, 2) == [6, 7]
    assert propose_prompt_lookup([1, 2, 3], 3, 4) == []
    assert propose_prompt_lookup([5, 1, 5], 2, 3) == [1, 5]


def test_quantization_refusals_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"models\[\].quantization: must be one of .*'int4'"):
        MeshConfig.from_dict({"models": [{"name": "a", "quantization": "int4"}]})
    with pytest.raises(ValueError, match=r"models\[\].quantization: .*engine.device cuda runs"):
        MeshConfig.from_dict(
            {"engine": {"device": "cuda"}, "models": [{"name": "a", "quantization": "int8"}]}
        )
    draft_of_int8 = [{"name": "a", "draft_model": "b"}, {"name": "b", "quantization": "int8"}]
    with pytest.raises(ValueError, match=r"models\[\].draft_model: .*quantised draft .*got 'b'"):
        MeshConfig.from_dict({"models": draft_of_int8})
    # An int8 model may draft from a full-precision one, on cpu (or npu, or auto).
    ok = [{"name": "a", "quantization": "int8", "draft_model": "b"}, {"name": "b"}]
    cfg = MeshConfig.from_dict({"models": ok, "engine": {"device": "cpu"}})
    assert cfg.models[0].quantization == "int8"


def test_a_bare_path_names_a_folder_under_models_dir(tmp_path: Path) -> None:
    from flexmesh.launch.config_file import model_folders

    cfg = MeshConfig.from_dict(
        {
            "models_dir": str(tmp_path),
            "models": [
                {"name": "demo-small"},
                {"name": "demo-small-int8", "path": "demo-small", "quantization": "int8"},
                {"name": "mine", "path": "./models/mine"},
            ],
        }
    )
    folders = model_folders(cfg)
    assert folders["demo-small-int8"] == folders["demo-small"] == tmp_path / "demo-small"
    assert folders["mine"] == Path("./models/mine")
