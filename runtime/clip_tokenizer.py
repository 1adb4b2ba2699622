"""CLIP's text tokenizer, shipped with the pack: single-file checkpoints need no tokenizer files.

SD1.5, SDXL (both encoders) and SSD-1B use OpenAI CLIP's byte-level BPE. Its vocabulary is fully
determined by the merge rules: the 256 byte symbols, the same symbols with the end-of-word marker
`</w>`, each merge's result in merge order, then `<|startoftext|>` (49406) and `<|endoftext|>`
(49407). The pack ships only the merges (`clip_bpe/merges.txt.gz`, MIT, see `clip_bpe/LICENSE`),
builds `vocab.json` from them and hands both to transformers' `CLIPTokenizer`, offline.

Padding is the encoder's business, not the tokenizer's: CLIP-L pads with the end token, SDXL's
OpenCLIP-G with token 0 (`!`), as ComfyUI's and diffusers' SDXL tokenizers do (`text_encoding`).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

MERGES_FILE = Path(__file__).with_name("clip_bpe") / "merges.txt.gz"
END_OF_WORD = "</w>"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77
TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": MAX_LENGTH,
    "bos_token": START_TOKEN,
    "eos_token": END_TOKEN,
    "unk_token": END_TOKEN,
    "pad_token": END_TOKEN,
}


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP byte-level BPE, in CLIP's
    order (printable Latin-1 bytes map to themselves, the rest to code points from 256 on)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's vocabulary (token -> id) for BPE `merges` ("a b" lines, highest priority first)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [m.replace(" ", "") for m in merges]
    return {token: i for i, token in enumerate([*tokens, START_TOKEN, END_TOKEN])}


def packaged_merges(path: Path = MERGES_FILE) -> list[str]:
    """The shipped merge rules, without the `#version` header."""
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise RuntimeError(
            f"{path}: the CLIP merges shipped with the pack are unreadable ({error}); reinstall the pack"
        ) from error
    return [line for line in text.split("\n") if line and not line.startswith("#version")]


def write_tokenizer_files(directory: str | Path, merges: list[str]) -> Path:
    """Write `vocab.json`, `merges.txt` and `tokenizer_config.json` (what transformers reads) for
    `merges` into `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2), encoding="utf-8")
    return directory


@lru_cache(maxsize=1)
def packaged_clip_tokenizer():
    """transformers' `CLIPTokenizer` with CLIP's 49408-token vocabulary, built from the shipped
    merges. Cached: callers share it and must not modify it."""
    merges = packaged_merges()
    try:
        return _tokenizer_in_memory(merges)
    except TypeError:  # transformers 4: the tokenizer is read from files only
        return _tokenizer_from_files(merges)


def _tokenizer_in_memory(merges: list[str]):
    """transformers 5's `CLIPTokenizer(vocab=..., merges=...)` (a tenth of the time of the files)."""
    from transformers import CLIPTokenizer

    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=clip_vocab(merges), merges=pairs, model_max_length=MAX_LENGTH)


def _tokenizer_from_files(merges: list[str]):
    """The tokenizer read back from `vocab.json` + `merges.txt` written to a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="lcm_accel_clip_") as folder:
        write_tokenizer_files(folder, merges)
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=MAX_LENGTH)
