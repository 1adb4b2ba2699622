"""ComfyUI's prompt emphasis syntax and its 77-token chunking, for the standalone host.

Semantics follow ComfyUI (`comfy/sd1_clip.py`), so a shared workflow gets the same tokens
and weights in both hosts:
- `(words)` multiplies the weight by 1.1 per nesting level; `(words:1.4)` sets it to 1.4
  (the number replaces the group's 1.1, it multiplies nothing); `\\(` and `\\)` are literal.
- `[words]` is NOT de-emphasis in ComfyUI (that is A1111 syntax): brackets are plain text.
- Each weighted segment is tokenized on its own; chunks are BOS + 75 tokens + EOS, padded to
  77. A segment of 8+ tokens may be split across chunks; a shorter one moves whole to the next.
"""

from __future__ import annotations

ESCAPED_OPEN = "\x00\x02"
ESCAPED_CLOSE = "\x00\x01"
EMPHASIS = 1.1
MAX_LENGTH = 77
LARGE_SEGMENT = 8  # segments at least this long may be split between chunks

TokenWeight = tuple[int, float]


def split_top_level_groups(text: str) -> list[str]:
    """Split `text` into plain runs and top-level `( ... )` groups (groups keep their parentheses)."""
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                pieces.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + char)
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """(segment, weight) pairs for a prompt whose escapes are already protected."""
    result: list[tuple[str, float]] = []
    for piece in split_top_level_groups(text):
        if len(piece) < 2 or not (piece[0] == "(" and piece[-1] == ")"):
            result.append((piece, weight))
            continue
        inner = piece[1:-1]
        inner_weight = weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1 :])
                inner = inner[:colon]
            except ValueError:
                pass
        result += parse_weights(inner, inner_weight)
    return result


def prompt_segments(text: str) -> list[tuple[str, float]]:
    """Weighted text segments of a prompt, with `\\(` / `\\)` turned back into literal parentheses."""
    protected = text.replace("\\)", ESCAPED_CLOSE).replace("\\(", ESCAPED_OPEN)
    return [
        (segment.replace(ESCAPED_CLOSE, ")").replace(ESCAPED_OPEN, "("), weight)
        for segment, weight in parse_weights(protected)
    ]


def tokenize_weighted(text: str, tokenizer, pad_token: int, max_length: int = MAX_LENGTH) -> list[list[TokenWeight]]:
    """Chunks of (token id, weight), each `max_length` long with BOS/EOS, as ComfyUI builds them."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    groups = []
    for segment, weight in prompt_segments(text):
        if segment == "":
            continue
        ids = tokenizer(segment)["input_ids"][1:-1]  # drop the tokenizer's own BOS/EOS
        groups.append([(t, weight) for t in ids])

    chunk: list[TokenWeight] = [(start, 1.0)]
    chunks = [chunk]
    room = max_length - 1  # keep one place for EOS
    for group in groups:
        is_large = len(group) >= LARGE_SEGMENT
        while group:
            if len(chunk) + len(group) <= room:
                chunk.extend(group)
                group = []
                continue
            remaining = room - len(chunk)
            if is_large:
                chunk.extend(group[:remaining])
                group = group[remaining:]
                chunk.append((end, 1.0))
            else:
                chunk.append((end, 1.0))
                chunk.extend([(pad_token, 1.0)] * remaining)
            chunk = [(start, 1.0)]
            chunks.append(chunk)
    chunk.append((end, 1.0))
    chunk.extend([(pad_token, 1.0)] * (max_length - len(chunk)))
    return chunks


def empty_tokens(tokenizer, pad_token: int, length: int = MAX_LENGTH) -> list[int]:
    """The empty prompt's tokens (BOS, EOS, padding): the reference point of weighting."""
    return [tokenizer.bos_token_id, tokenizer.eos_token_id] + [pad_token] * (length - 2)
