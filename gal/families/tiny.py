"""The tiny models' shared parts: an offline CLIP tokenizer, a T5 tokenizer, VAE and CLIP text configs.

Every family's ``build_tiny`` uses them with its own overrides; nothing here is downloaded.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

TINY_VAE = dict(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    sample_size=32,
    norm_num_groups=16,
)
TINY_CLIP_TEXT = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=32,
)


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    cache = Path(os.environ.get("GAL_CACHE", Path.home() / ".cache" / "gal-studio")) / "clip-tokenizer"
    if not (cache / "tokenizer_config.json").exists():
        from gal.toyworld.tokenizer import build_clip_tokenizer  # offline, from open_clip's bundled BPE

        build_clip_tokenizer(cache)
    return cache


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_tokenizer_dir()))


def t5_tokenizer(model_max_length: int = 32):
    """An offline T5 (Unigram) tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then single characters and
    the CLIP vocabulary's whole words as ``▁word`` pieces (scored so whole words win)."""
    from transformers import T5TokenizerFast

    from gal.toyworld.tokenizer import clip_vocab_and_merges

    vocab, _ = clip_vocab_and_merges()
    words = [t[: -len("</w>")] for t in list(vocab)[512:] if t.endswith("</w>") and t[:-4].isalnum()][:2000]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-<>()") | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -8.0) for c in chars] + [("▁" + c, -8.0) for c in chars]
    seen = {p for p, _ in pieces}
    for i, w in enumerate(words):
        if "▁" + w not in seen:
            seen.add("▁" + w)
            pieces.append(("▁" + w, -3.0 - i * 1e-3))
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def tiny_t5(tokenizer, d_model: int, seed: int):
    """A tiny T5 encoder (eval mode: built in training mode, T5's dropout would make embeddings random)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            vocab_size=len(tokenizer),
            decoder_start_token_id=0,
        )
    ).eval()


def tiny_gemma2(tokenizer, seed: int, max_positions: int):
    """A tiny Gemma-2 text encoder (Lumina 2, Sana): width 16, 2 layers, pad/eos/bos 0/1/2."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    return Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=max_positions,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    ).eval()


@lru_cache(maxsize=8)
def _bpe_json(
    specials: tuple[str, ...], words: tuple[str, ...], extra: tuple[str, ...], vocab_size: int
) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] + list(extra)
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return tok.to_str()


def bpe_tokenizer(specials, words: str, extra=(), vocab_size: int = 1024):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained offline on every rotation of ``words`` plus the
    ``extra`` texts (a template, a system message), ``specials`` first (ids 0, 1, …): the same vocabulary
    and merges on every machine (the trainer is deterministic on a fixed corpus), each corpus word one
    token as in the real vocabularies. The tiny Qwen, Gemma and Mistral encoders' tokenizers wrap it."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_bpe_json(tuple(specials), tuple(words.split()), tuple(extra), vocab_size))


def bpe_vocab(specials, words: str, extra=(), vocab_size: int = 1024) -> tuple[dict, list]:
    """``bpe_tokenizer``'s vocabulary and merges (as transformers' slow-style constructors take them)."""
    import json

    model = json.loads(_bpe_json(tuple(specials), tuple(words.split()), tuple(extra), vocab_size))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges
