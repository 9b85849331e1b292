"""Fixtures of the loadgen tests: shared data, a small real BPE tokenizer, a tiny prompt pool."""

from __future__ import annotations

import gzip
import json
import sysconfig
from pathlib import Path
from typing import Any

import pytest

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

CHINESE = (
    "中国的首都是北京。长江是中国最长的河流，全长约六千三百公里。下列关于光合作用的说法，"
    "正确的是哪一项？植物通过叶绿体吸收光能，把二氧化碳和水合成有机物，并释放氧气。"
)
MINI_PROMPTS: dict[str, list[str]] = {
    "code": [
        'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n',
        "Write a Python function that reverses a linked list in place.",
        "def is_prime(n):\n    # return True when n is prime\n    for i in range(2, n):\n",
    ],
    "math": [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "Solve for x: 3x + 7 = 22.",
        "What is the sum of the first 100 positive integers?",
    ],
    "knowledge_qa": [
        "Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn",
        "who wrote the novel pride and prejudice",
    ],
    "chinese_exam": [
        CHINESE,
        "下列哪一项是中国古代四大发明之一？\nA. 造纸术\nB. 蒸汽机\nC. 电话\nD. 电灯",
    ],
    "chat": [
        "Compose an engaging travel blog post about a recent trip to Hawaii.",
        "Can you give me some tips for staying focused while working from home?",
        "Tell me a short story about a robot who learns to paint.",
    ],
    "long_context": [
        ("The committee met on Tuesday to review the annual report. " * 60)
        + "\n\nSummarise the document above in three sentences."
    ],
}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder beside the repository (skips when it is not there)."""
    if not (DATA_DIR / "traces").is_dir():
        pytest.skip(f"shared data folder not found at {DATA_DIR} (clone shared/ beside the repo)")
    return DATA_DIR


def _corpus() -> list[str]:
    texts = [p for ps in MINI_PROMPTS.values() for p in ps] * 3
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("argparse.py", "textwrap.py", "json/decoder.py", "csv.py"):
        path = stdlib / name
        if path.exists():
            texts.append(path.read_text(encoding="utf-8", errors="ignore"))
    texts.append(CHINESE * 20)
    return texts


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """A real byte-level BPE tokenizer trained in well under a second, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prompts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny labelled prompt pool in the shared data's format (one file gzip'd)."""
    root = tmp_path_factory.mktemp("prompts")
    rows = [
        {"id": f"{task}/{i}", "task": task, "source": "test", "prompt": p}
        for task, ps in MINI_PROMPTS.items()
        for i, p in enumerate(ps)
    ]
    half = len(rows) // 2
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:half]))
    with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[half:])
    return root
