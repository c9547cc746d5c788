"""The model card (README.md with Hugging Face front matter) of an export."""

from __future__ import annotations

import json
from pathlib import Path

from gal.config import RunConfig
from gal.families.base import ExportFacts


def _yaml(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def model_card(
    run: dict,
    config: RunConfig,
    rounds: list[dict],
    references: list[dict],
    provenance: dict,
    *,
    facts: ExportFacts,
    samples: list[dict] | None = None,
    files: dict[str, str] | None = None,
) -> str:
    samples = samples or []
    files = files or {}
    hub_base = not (
        config.model in ("tiny", "toy")
        or Path(config.model).expanduser().exists()
        or config.model.startswith((".", "/", "~"))
    )
    front = ["---"]
    if hub_base:
        front.append(f"base_model: {_yaml(config.model)}")
    front += [
        f"instance_prompt: {_yaml(config.subject_phrase)}",
        "library_name: diffusers",
        f"license: {facts.license if hub_base else 'other'}",
        "tags:",
        "- text-to-image",
        "- diffusers",
        "- lora",
        "- template:sd-lora",
        "- diffusers-training",
        *(f"- {tag}" for tag in facts.tags),
        "- gal-studio",
    ]
    if samples:
        front.append("widget:")
        for s in samples:
            front += [f"- text: {_yaml(s['prompt'])}", "  output:", f"    url: {_yaml(s['file'])}"]
    front.append("---")
    name = run.get("name") or run["run_id"]
    lines = front + [
        "",
        f"# {name}",
        "",
        "A LoRA trained with GAL Studio (Generative Active Learning for image-synthesis personalization).",
        "",
        f"- base model: `{config.model}` ({facts.variant})",
        f"- task: {config.task}; SoI token `{config.soi_token}`; subject phrase `{config.subject_phrase}`",
        f"- strategy: {config.gal.strategy}; m={config.gal.m}, k={config.gal.k}, λ={config.gal.lam}, "
        f"rounds={len(rounds)} (max {config.gal.max_rounds})",
        f"- LoRA: rank {config.train.rank}, alpha {config.train.lora_alpha} "
        f"(scale {config.train.lora_alpha / config.train.rank:g}), "
        f"lr {config.train.learning_rate}, {config.train.steps} steps/round, "
        f"targets {', '.join(config.train.target_modules)}",
        f"- references: {sum(r['source'] == 'real' for r in references)} real, "
        f"{sum(r['source'] == 'synthetic' for r in references)} added by GAL",
        f"- provenance: run `{provenance['gal.run_id']}`, round {provenance['gal.round']}, "
        f"config hash `{provenance['gal.config_hash']}`",
        "",
        "## Metrics per round (held-out prompts)",
        "",
        "| round | TXT-ALN | IMG-ALN | OVF | Δ (openness) |",
        "|---|---|---|---|---|",
    ]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rounds:
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['round_index']} | {fmt(m.get('txt_aln'))} | {fmt(m.get('img_aln'))} | "
            f"{fmt(m.get('ovf'))} | "
            f"{fmt(r.get('openness'))} |"
        )
    lines += [
        "",
        "TXT-ALN = 2.5 × max(CLIP cosine, 0) to the prompt; "
        "IMG-ALN = CLIP image cosine to the real references;",
        "OVF = share of images closer to the references' non-subject caption than to the prompt (Eq. 8).",
        "",
        "## Files and use",
        "",
    ]
    trigger = f" Trigger: `{config.soi_token}`." if config.task == "object" else ""
    if "kohya" in files:
        lines.append(
            f"- `{files['kohya']}`: kohya keys for A1111 / Forge / ComfyUI / sd-scripts — copy it into "
            f"`models/Lora` (ComfyUI: `models/loras`) and prompt "
            f"`<lora:{Path(files['kohya']).stem}:1>`.{trigger}"
        )
    if "diffusers" in files:
        lines += [
            f"- `{files['diffusers']}`: diffusers keys:",
            "",
            "```python",
            f"pipe.load_lora_weights('<this folder>', weight_name='{files['diffusers']}')",
            "```",
            "",
        ]
    if "fused" in files:
        lines.append(
            "- `pipeline/`: the base model with the LoRA merged in "
            "(`StableDiffusionPipeline.from_pretrained`)."
        )
    if "checkpoint" in files:
        cfg = "pipeline" if "fused" in files else "config"
        lines.append(
            f"- `{files['checkpoint']}`: the merged model as one checkpoint in the original SD layout "
            f"(A1111 `models/Stable-diffusion`; diffusers: `from_single_file(path, config='{cfg}')`)."
        )
    if "dataset" in files:
        lines.append(
            "- `dataset/`: the references (real and added) with prompts, training captions and weights "
            "(`metadata.jsonl`; the caption also in a `.txt` beside each image: OneTrainer and ai-toolkit "
            "read it, kohya's sd-scripts with `--caption_extension .txt`)."
        )
    lines.append("")
    return "\n".join(lines)
