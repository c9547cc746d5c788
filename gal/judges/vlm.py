"""A vision-language model as a judge, and as the captioner of ``train.captions: vlm``.

Asked, per image, "Does this image show <non-SoI content> rather than <anchor>? Answer yes or no.", the
probability of the next token being *yes* against *no* (summed over their spellings) is
``p = P(yes) / (P(yes) + P(no))``: verdict overfit when ``p >= 0.5``, confidence ``|2p - 1|``.

Any transformers image-text-to-text model with a processor loads from a hub id or a local folder
(``vlm:HuggingFaceTB/SmolVLM-256M-Instruct``, ``vlm:/models/llava``); ``vlm:tiny`` is a random-init LLaVA
(CLIP vision tower + Llama) with a word-level tokenizer built by the ``tokenizers`` library, offline.
"""

from __future__ import annotations

import torch
from PIL import Image

from gal.judges.base import Judgement, JudgeRequest, from_probability

YES, NO = ("yes", "Yes", " yes", " Yes", "YES"), ("no", "No", " no", " No", "NO")
TINY_WORDS = (
    "<unk> <pad> <s> </s> <image> user: assistant: yes no does this image show rather than answer or a an "
    "the of on in at under to with and is it what around describe scene name background objects not few "
    "words its details star stairs heart blank style cat dog toy subject workshop museum plane boat "
    "laboratory aquarium subway pet store cafe gym bus stop garden train station junkyard alleyway "
    "schoolyard bank tree beach drawing picture photo . , ? :"
).split()


def build_tiny(seed: int = 0):
    """A tiny random-init LLaVA and its processor, from configs (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(dict.fromkeys(TINY_WORDS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=32,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(vocab), pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"])
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor


def load(arg: str, device: torch.device):
    if arg == "tiny":
        model, processor = build_tiny()
        return model.to(device), processor
    try:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(arg)
        model = AutoModelForImageTextToText.from_pretrained(arg).eval()
    except Exception as err:  # hub/file errors come in many types
        raise ValueError(
            f"could not load VLM judge {arg!r} ({type(err).__name__}: {err}); offline, pass a local folder "
            "with an image-text-to-text model and its processor (e.g. a saved SmolVLM), or use vlm:tiny"
        ) from err
    return model.to(device), processor


def question(anchor: str, non_soi: list[str]) -> str:
    return f"Does this image show {' or '.join(non_soi)} rather than {anchor}? Answer yes or no."


def caption_question(subject: str) -> str:
    return f"Describe the scene around {subject or 'the subject'} in a few words, not its details."


class VlmJudge:
    def __init__(self, name: str, model, processor, device: torch.device):
        self.name, self.model, self.processor, self.device = name, model, processor, device
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.yes = self._token_ids(YES)
        self.no = self._token_ids(NO)
        if not self.yes or not self.no or set(self.yes) & set(self.no):
            raise ValueError(f"VLM judge {name!r}: its tokenizer has no distinct 'yes'/'no' tokens to read")

    def _token_ids(self, words) -> list[int]:
        unk = self.tokenizer.unk_token_id
        ids = {
            self.tokenizer.encode(w, add_special_tokens=False)[:1][0]
            for w in words
            if self.tokenizer.encode(w, add_special_tokens=False)
        }
        return sorted(i for i in ids if i != unk)

    def _inputs(self, image: Image.Image, text: str):
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            token = getattr(self.processor, "image_token", None) or "<image>"
            prompt = f"USER: {token} {text} ASSISTANT:"
        inputs = self.processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")
        return {
            k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }

    @torch.no_grad()
    def p_yes(self, image: Image.Image, text: str) -> tuple[float, float]:
        """(P(yes), P(no)) of the answer's first token."""
        logits = self.model(**self._inputs(image, text)).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        return float(probs[self.yes].sum()), float(probs[self.no].sum())

    def judge(self, request: JudgeRequest) -> list[Judgement]:
        out = []
        for image, anchor in zip(request.images, request.anchor_texts, strict=True):
            p_yes, p_no = self.p_yes(image, question(anchor, request.non_soi_texts))
            verdict, confidence = from_probability(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5)
            out.append(
                Judgement(
                    verdict, confidence, {"p_yes": p_yes, "p_no": p_no}, {self.name: (verdict, confidence)}
                )
            )
        return out

    @torch.no_grad()
    def describe(self, image: Image.Image, subject: str, max_new_tokens: int = 16) -> str:
        """A few words on what surrounds the subject (greedy, so the same image gets the same words)."""
        inputs = self._inputs(image, caption_question(subject))
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return " ".join(text.replace("<unk>", " ").split())
