"""An offline CLIP tokenizer: rebuilt from the BPE file bundled with open_clip, no download.

The ids match ``open_clip.tokenizer.SimpleTokenizer`` exactly (49,408 tokens), which is how OpenAI CLIP
builds its vocabulary: the byte alphabet, the same with ``</w>``, the merges, then the two specials.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # 48,894 merges, as in OpenAI CLIP


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (token -> id) and merge list of OpenAI CLIP, from open_clip's bundled BPE."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """Write ``vocab.json`` + ``merges.txt`` (+ configs) to ``directory`` and return a ``CLIPTokenizer``.

    In transformers 5, ``CLIPTokenizer(vocab_file=..., merges_file=...)`` is silently ignored, so the
    files are written and loaded with ``from_pretrained``; the folder is then a standard tokenizer folder.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = dict(
        special,
        model_max_length=model_max_length,
        tokenizer_class="CLIPTokenizer",
        do_lower_case=True,
        clean_up_tokenization_spaces=False,
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return CLIPTokenizer.from_pretrained(str(directory))
