"""Block swap (gal.blockswap): the same adapter as no swap, the swapped weights live on the offload device
between steps and are streamed in (as fresh copies that are freed) while their block runs."""

import gc
import weakref

import pytest
import torch
from PIL import Image

from gal import blockswap, families, training
from gal.config import TrainConfig
from gal.training import TrainExample


def _examples() -> list[TrainExample]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i, prompt in enumerate(["a <sks> star on grass", "a <sks> star in the sea", "a <sks> star"]):
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(TrainExample(Image.fromarray(pixels), prompt, weight=1.0 if i < 2 else 0.5, added=i == 2))
    return out


def _train(pipe, **train) -> tuple[dict[str, torch.Tensor], list[float]]:
    cfg = TrainConfig(steps=3, learning_rate=1e-2, batch_size=2, **train)
    cfg.validate()
    result = training.train_lora(pipe, _examples(), cfg, resolution=32, seed=5)
    return training.adapter_state(pipe), result.losses


@pytest.fixture(scope="module")
def flux():
    return families.get("flux").build_tiny(seed=0)


def test_block_swap_trains_exactly_the_adapter_no_swap_trains(flux, monkeypatch):
    plain, plain_losses = _train(flux)
    ckpt, _ = _train(flux, gradient_checkpointing=True)
    made = []
    start = blockswap.start
    monkeypatch.setattr(blockswap, "start", lambda *a: made.append(start(*a)) or made[-1])
    swapped, swapped_losses = _train(flux, blocks_to_swap=3)  # 3 of tiny FLUX.1's 4 blocks
    assert made[0].streamed == 3 * 3 * 2  # 3 steps x 3 blocks x (forward + checkpoint recompute)
    assert plain_losses == swapped_losses  # bit-identical: the streamed copies hold the same values
    assert set(plain) == set(swapped) and len(plain) > 0
    for key in plain:
        assert torch.equal(plain[key], swapped[key]), key
        assert torch.equal(plain[key], ckpt[key]), key
    # training changed the adapter (B starts at 0), so equality above is not two untouched adapters
    assert any(v.abs().sum() > 0 for k, v in swapped.items() if "lora_B" in k)
    # after training the weights are ordinary parameters on the device again and the hooks are gone
    assert all(p.device.type == "cpu" for p in flux.transformer.parameters())
    assert not any(b._forward_pre_hooks for b in blockswap.swappable_blocks(flux.transformer))


def test_swapped_weights_sit_on_the_offload_device_between_steps_and_stream_as_freed_copies(flux):
    training.attach_adapter(flux.transformer, TrainConfig(rank=4), seed=0, family=families.get("flux"))
    lora = {n: p for n, p in flux.transformer.named_parameters() if "lora_" in n}
    swap = blockswap.BlockSwap(flux.transformer, 2, device="cpu", offload="cpu")
    try:
        assert swap.blocks == list(flux.transformer.single_transformer_blocks)  # the last two, in order
        assert swap.offloaded()
        master_ptrs = {m.data_ptr() for entries in swap.masters for _, _, m in entries}
        seen: list[weakref.ref] = []
        ptrs: set[int] = set()

        def spy(module, args, kwargs=None):  # runs after the swap's own pre-hook: sees the streamed copies
            for p in module.parameters():
                if not p.requires_grad:
                    seen.append(weakref.ref(p))
                    ptrs.add(p.data_ptr())

        handle = swap.blocks[0].register_forward_pre_hook(spy)
        # one checkpointed training step through the real transformer
        flux.transformer.enable_gradient_checkpointing()
        flux.transformer.train()
        params = list(lora.values())
        opt = torch.optim.AdamW(params, lr=1e-2)
        scheduler = families.get("flux").noise_scheduler(flux)
        cond = families.get("flux").encode(flux, ["a <sks> star"], 32)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            loss = families.get("flux").per_sample_loss(
                flux, scheduler, latents, cond, torch.Generator().manual_seed(1), TrainConfig(), False
            )
            loss.sum().backward()
            opt.step()
            opt.zero_grad()
            gc.collect()
            # between steps: the masters are in place, on the offload device; the streamed copies are gone
            assert swap.offloaded()
            assert all(ref() is None for ref in seen)
        handle.remove()
        # each step streamed block 0 in twice (forward + checkpoint recompute), never as the master itself
        assert swap.streamed == 2 * 2 * 2
        assert ptrs and not ptrs & master_ptrs
        # LoRA stayed put: the same trainable objects on the compute device, updated by the optimizer
        after = {n: p for n, p in flux.transformer.named_parameters() if "lora_" in n}
        assert all(after[n] is p and p.requires_grad and p.device.type == "cpu" for n, p in lora.items())
        assert all(p.grad is None for p in params)
    finally:
        swap.close()
        flux.transformer.disable_gradient_checkpointing()
        flux.transformer.eval()
        training.remove_adapter(flux.transformer)
    assert not swap.masters and not any(
        b._forward_hooks for b in blockswap.swappable_blocks(flux.transformer)
    )


def test_bad_block_counts_are_refused_with_the_limit(flux):
    with pytest.raises(ValueError, match="use at most 4"):
        blockswap.BlockSwap(flux.transformer, 5, device="cpu")
    with pytest.raises(ValueError, match="blocks_to_swap must be an integer"):
        TrainConfig(blocks_to_swap=1.5).validate()
    with pytest.raises(ValueError, match="between 0 and 1000"):
        TrainConfig(blocks_to_swap=-1).validate()
    with pytest.raises(ValueError, match="no transformer blocks"):
        blockswap.BlockSwap(torch.nn.Linear(2, 2), 1, device="cpu")


def test_memory_advice_sizes_the_block_swap_that_fits():
    """A 20B transformer of 60 blocks (Qwen-Image's shape) in fp8 on a 24 GB card: the refusal names
    train.blocks_to_swap=N, and with N the estimate fits."""
    from gal.families.memory import advice, training_bytes

    flux = families.get("flux")
    shape = dict(
        denoiser_params=20_400_000_000,
        text_encoder_params=8_300_000_000,
        vae_params=127_000_000,
        lora_params=40_000_000,
        activations_16bit=60e9,
        activations_ckpt_16bit=3e9,
        quantize_base="fp8",
        offload_text_encoders=True,
        gradient_checkpointing=True,
        blocks=60,
        block_params=20_400_000_000 / 60,
    )
    cfg = TrainConfig(quantize_base="fp8", offload_text_encoders=True, gradient_checkpointing=True)
    free = 22 * 2**30
    need = training_bytes(**shape)
    message = advice(need, free, cfg, flux)
    n = int(message.split("train.blocks_to_swap=")[1].split(",")[0].split(" ")[0])
    assert 2 < n < 60
    swapped = training_bytes(**shape, blocks_to_swap=n)
    assert swapped["total"] <= free < training_bytes(**shape, blocks_to_swap=n - 3)["total"]
    cfg.blocks_to_swap = n
    assert advice(swapped, free, cfg, flux) is None
    print(
        f"20B/60 blocks fp8, 22 GiB free: {need['total'] / 2**30:.1f} GiB -> blocks_to_swap={n}: "
        f"{swapped['total'] / 2**30:.1f} GiB"
    )


def test_the_refusal_names_the_block_swap_setting_of_the_field_table():
    """The refusal's words for block swap are a real row of gal/fields.py: its label on the Set up page, its
    ``gal run`` flag, and both set ``train.blocks_to_swap`` (empty in the form: the family's preset)."""
    import argparse

    from gal import fields
    from gal.config import RunConfig
    from gal.families.memory import advice, training_bytes

    shape = dict(denoiser_params=20e9, text_encoder_params=8e9, vae_params=1e8, lora_params=4e7,
                 activations_16bit=60e9, activations_ckpt_16bit=3e9, quantize_base="fp8", blocks=60,
                 offload_text_encoders=True, gradient_checkpointing=True, block_params=20e9 / 60)  # fmt: skip
    cfg = TrainConfig(quantize_base="fp8", offload_text_encoders=True, gradient_checkpointing=True)
    message = advice(training_bytes(**shape), 22 * 2**30, cfg, families.get("flux"))
    n = int(message.split("train.blocks_to_swap=")[1].split(" ")[0])
    (row,) = [f for f in fields.fields() if f.path == "train.blocks_to_swap"]
    assert f"'{row.label}' = {n}" in message and f"gal run {row.flag} {n}" in message
    parser = argparse.ArgumentParser()
    fields.add_flags(parser)
    config = RunConfig()
    fields.apply_flags(config, parser.parse_args([row.flag, str(n)]))
    assert config.train.blocks_to_swap == n
    assert fields.parse(row.name, "") is None and fields.parse(row.name, str(n)) == n
    with pytest.raises(ValueError, match=row.says):
        fields.parse(row.name, "-1")
    form = fields.default_form("tiny", "tiny")
    assert form[row.name] is None and fields.config_from_form({**form, row.name: n}).train.blocks_to_swap == n
