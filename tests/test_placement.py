"""gal/placement.py: a pipeline that does not fit the GPU whole is placed in parts — text encoders visit the
device while they run, the denoiser's last blocks stream from the CPU and the rest is placed block by
block (quantized there when asked). On the CPU "parts" moves nothing, so these tests check what it runs:
the same adapter and the same images as "whole", the hooks' order of moves, the quantized resident blocks,
and the load-time choice. The memory it saves is a GPU's to show (bench/gpu)."""

import pytest
import torch
from PIL import Image

from gal import placement
from gal.config import GenerateConfig, TrainConfig
from gal.generation import generate
from gal.models import load_pipeline
from gal.training import TrainExample, adapter_state, load_adapter, save_adapter, train_lora

MODEL = "tiny-flux"  # 4 swappable blocks: 2 double, 2 single
CPU = torch.device("cpu")


def _examples(reference_files):
    return [TrainExample(Image.open(p).convert("RGB"), "a <sks> star", 1.0) for p in reference_files[:2]]


def _train_and_draw(reference_files, mode, **train):
    pipe = load_pipeline(MODEL, CPU, torch.float32, placement=mode)
    cfg = TrainConfig(steps=2, learning_rate=1e-2, batch_size=2, **train)
    result = train_lora(pipe, _examples(reference_files), cfg, resolution=32, seed=1)
    gen = GenerateConfig(steps=2, batch_size=2)
    images = generate(pipe, ["a <sks> star", "a dog"], [1, 2], gen, resolution=32)
    return pipe, result, adapter_state(pipe), images


def test_the_load_choice_is_whole_where_it_fits_else_parts():
    gib = 2**30
    assert placement.choose(20 * gib, 24 * gib) == "whole"
    assert placement.choose(22 * gib, 24 * gib) == "parts"  # 22 + the 3 GiB margin > 24
    assert placement.choose(58 * gib, 23 * gib) == "parts"  # Qwen-Image bf16 on a 24 GB card
    pipe = load_pipeline(MODEL, CPU, torch.float32)
    assert not placement.is_parts(pipe) and placement.compute_device(pipe) == CPU  # the CPU: whole
    with pytest.raises(ValueError, match="'whole' or 'parts'"):
        placement.place(pipe, None, CPU, "half")


def test_parts_trains_the_same_adapter_and_draws_the_same_images_as_whole(reference_files):
    """With one block streamed: the placement changes where weights live, not the arithmetic."""
    whole = _train_and_draw(reference_files, "whole", blocks_to_swap=1, gradient_checkpointing=True)
    parts = _train_and_draw(reference_files, "parts", blocks_to_swap=1, gradient_checkpointing=True)
    pipe = parts[0]
    assert placement.is_parts(pipe) and pipe._gal_placed == (1, None)
    assert pipe._gal_swap is not None and pipe._gal_swap.streamed > 0  # the swap stays on for generation
    assert whole[1].losses == parts[1].losses
    assert whole[2].keys() == parts[2].keys()
    assert all(torch.equal(whole[2][k], parts[2][k]) for k in whole[2])
    for a, b in zip(whole[3], parts[3], strict=True):
        assert (torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).abs().max() <= 1


def test_text_encoders_visit_the_device_only_while_they_run():
    """The pre-hook moves the encoder to the device, the hook moves it home; the caller gets the outputs on
    the device its inputs came from (here both are the CPU: the order of moves is what is checked)."""
    encoder = torch.nn.Linear(3, 2)
    moves = []
    original = encoder.to

    def spy(*args, **kwargs):
        moves.append(str(args[0]) if args else str(kwargs))
        return original(*args, **kwargs)

    encoder.to = spy
    placement.visit_while_running(encoder, torch.device("cpu"), home="cpu")
    placement.visit_while_running(encoder, torch.device("cpu"), home="cpu")  # idempotent: one pair of hooks
    moves.clear()
    out = encoder(torch.ones(1, 3))
    assert moves == ["cpu", "cpu"] and out.device == CPU  # to the device, then home
    encoder(input=torch.ones(1, 3))  # keyword inputs move too
    assert moves == ["cpu", "cpu", "cpu", "cpu"]


def test_parts_quantizes_the_resident_blocks_and_streams_the_swapped_ones_unquantized(reference_files):
    pytest.importorskip("torchao")
    pipe = load_pipeline(MODEL, CPU, torch.float32, placement="parts")
    cfg = TrainConfig(steps=2, learning_rate=1e-2, batch_size=2, blocks_to_swap=2, quantize_base="int8")
    result = train_lora(pipe, _examples(reference_files), cfg, resolution=32, seed=1)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    transformer = pipe.transformer
    resident = transformer.transformer_blocks[0].attn.to_k  # not swapped: quantized where it lives
    swapped = transformer.single_transformer_blocks[1].attn.to_k  # the last block: streamed as it is
    assert type(resident.base_layer.weight).__module__.startswith("torchao")  # int8, on the device
    assert type(swapped.base_layer.weight.data) is torch.Tensor  # base precision, on the CPU
    assert pipe._gal_placed == (2, "int8") and pipe._gal_quantized == "int8"
    # a second round on the same pipeline keeps the placement; its adapter is trained again
    again = train_lora(pipe, _examples(reference_files), cfg, resolution=32, seed=2)
    assert len(again.losses) == 2 and pipe._gal_placed == (2, "int8")


def test_a_saved_adapter_loads_back_onto_a_parts_pipeline(reference_files, tmp_path):
    """Generation of a past round loads its adapter from disk onto the placed pipeline: the same images."""
    pipe, _, _, images = _train_and_draw(reference_files, "parts", blocks_to_swap=1)
    save_adapter(pipe, tmp_path / "adapter", TrainConfig())
    fresh = load_pipeline(MODEL, CPU, torch.float32, placement="parts")
    load_adapter(fresh, tmp_path / "adapter")
    gen = GenerateConfig(steps=2, batch_size=2)
    again = generate(fresh, ["a <sks> star", "a dog"], [1, 2], gen, resolution=32)
    for a, b in zip(images, again, strict=True):
        assert (torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).abs().max() <= 1


def test_text_encoder_lora_is_refused_in_parts(reference_files):
    pipe = load_pipeline("tiny", CPU, torch.float32, placement="parts")
    cfg = TrainConfig(steps=1, train_text_encoder=True)
    with pytest.raises(ValueError, match="placed in parts.*train.train_text_encoder off"):
        train_lora(pipe, _examples(reference_files), cfg, resolution=32, seed=1)


def test_an_empty_blocks_to_swap_is_sized_to_the_card():
    """train.blocks_to_swap left empty: a run that block swap makes fit streams that many blocks instead of
    being refused; set by the person, the same shortfall is refused naming the count."""
    from gal.families.base import of, resolve_memory
    from gal.families.memory import estimate_from_pipe
    from gal.training import check_memory

    pipe = load_pipeline("tiny-chroma", CPU, torch.float32)  # 4 swappable blocks
    family = of(pipe)
    cfg = resolve_memory(TrainConfig(), family, CPU)
    need = estimate_from_pipe(pipe, family, cfg, 32)
    free = need["total"] - need["block_bytes"] / 2  # half a block short
    sized = check_memory(pipe, family, cfg, 32, size_swap=True, free=free)
    assert sized.blocks_to_swap == 3  # one to cover the shortfall + the two streamed in at a time
    assert estimate_from_pipe(pipe, family, sized, 32)["total"] <= free < need["total"]
    with pytest.raises(ValueError, match=r"train.blocks_to_swap=3 "):
        check_memory(pipe, family, cfg, 32, size_swap=False, free=free)
    with pytest.raises(ValueError, match="needs about"):  # no swap count fits: refused as before
        check_memory(pipe, family, cfg, 32, size_swap=True, free=need["total"] - 10 * need["block_bytes"])
    assert check_memory(pipe, family, cfg, 32, size_swap=True, free=need["total"]) is cfg  # fits: unchanged


def test_free_memory_honours_the_process_allocator_cap(monkeypatch):
    """A process capped at 24 GB of an 80 GB card (set_per_process_memory_fraction) has 24 GB less what it
    reserved to place a model in, not the driver's 70 GB free."""
    gb = 10**9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.3)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 4 * gb)
    assert placement.free_bytes(torch.device("cuda")) == 20 * gb
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0)
    assert placement.free_bytes(torch.device("cuda")) == 70 * gb  # uncapped: the driver's figure
