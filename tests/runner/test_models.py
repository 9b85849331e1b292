"""Demo checkpoints, the shared tokenizer, and refusing unsupported architectures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from flexmesh.actors.runner.demo_models import build_demo_models
from flexmesh.actors.runner.model import UnsupportedModelError
from flexmesh.actors.runner.runner import check_architecture

TEXTS = (
    "def f(x):\n    return x ** 2  # square\n",
    "你好，世界！这是一个测试。",
    "  spaces\tand\nlines  ",
)


def test_tokenizer_round_trips_and_is_shared(models_dir: Path) -> None:
    small = AutoTokenizer.from_pretrained(str(models_dir / "demo-small"))
    large = AutoTokenizer.from_pretrained(str(models_dir / "demo-large"))
    assert 7000 <= len(small) <= 9000
    for text in TEXTS:
        ids = small.encode(text, add_special_tokens=False)
        assert ids == large.encode(text, add_special_tokens=False)
        assert small.decode(ids) == text
    assert small.eos_token == "<|endoftext|>"


def test_build_is_idempotent_and_fast_on_second_run(models_dir: Path) -> None:
    stamp = (models_dir / "demo-large" / "model.safetensors").stat().st_mtime
    t0 = time.perf_counter()
    build_demo_models(models_dir)
    assert time.perf_counter() - t0 < 1.0
    assert (models_dir / "demo-large" / "model.safetensors").stat().st_mtime == stamp


def test_unsupported_architecture_is_refused_by_name(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir / "demo-small", tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*Qwen2ForCausalLM"):
        check_architecture(tmp_path / "m")
