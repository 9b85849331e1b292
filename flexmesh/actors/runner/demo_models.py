"""`flexmesh models build-demo DIR`: two small random-weight Qwen2 models and one tokenizer
(with Qwen2's ChatML chat template).

The tokenizer is a byte-level BPE trained offline on Python's own standard library sources (on
every machine, no download) with Qwen2's pre-tokenizer, normaliser and decoder, so
`AutoTokenizer.from_pretrained` round-trips it exactly like a Qwen2 tokenizer.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

BUILD_VERSION = 2
"""Bumped whenever the demo recipe changes, so stale builds are rebuilt."""
MARKER = ".flexmesh-demo.json"

QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 8192
CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""Qwen2's chat format (ChatML), so the HTTP chat API renders chats as for a real Qwen2."""
CORPUS_CHARS = 4_000_000


@dataclass(frozen=True)
class DemoShape:
    """Architecture of one demo model."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    seed: int


DEMO_MODELS = (
    DemoShape("demo-small", 256, 4, 4, 2, 640, seed=1),
    DemoShape("demo-large", 768, 12, 12, 4, 1792, seed=2),
)
MAX_POSITION_TOKENS = 4096


def _corpus() -> list[str]:
    """Deterministic training text: the standard library's Python sources, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        texts.append(text)
        total += len(text)
        if total >= CORPUS_CHARS:
            break
    return texts


def build_tokenizer(out_dir: Path) -> None:
    """Train the shared byte-level BPE and save it as a Hugging Face tokenizer folder."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=MAX_POSITION_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out_dir))


def _build_model(shape: DemoShape, tokenizer_dir: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=MAX_POSITION_TOKENS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(shape.seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def is_built(model_dir: Path) -> bool:
    marker = model_dir / MARKER
    if not marker.exists():
        return False
    return json.loads(marker.read_text()).get("version") == BUILD_VERSION


def build_demo_models(root: str | Path, force: bool = False) -> dict[str, Path]:
    """Write `root/demo-small` and `root/demo-large`; skip those already built (idempotent)."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    paths = {s.name: root / s.name for s in DEMO_MODELS}
    todo = [s for s in DEMO_MODELS if force or not is_built(paths[s.name])]
    if not todo:
        return paths
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        existing = next((paths[s.name] for s in DEMO_MODELS if is_built(paths[s.name])), None)
        if existing is not None and not force:
            tok_dir = existing  # keep one shared tokenizer across both models
        else:
            log.info("demo.tokenizer.train", vocab=VOCAB_SIZE)
            build_tokenizer(tok_dir)
        for shape in todo:
            log.info("demo.model.build", model=shape.name, hidden=shape.hidden_size)
            staging = Path(tmp) / shape.name
            _build_model(shape, tok_dir, staging)
            (staging / MARKER).write_text(
                json.dumps({"version": BUILD_VERSION, "shape": shape.name})
            )
            if paths[shape.name].exists():
                shutil.rmtree(paths[shape.name])
            staging.rename(paths[shape.name])  # atomic: a half-built folder never looks built
    return paths
