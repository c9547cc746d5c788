"""The full-size published configs (gal/families/published.py) build on the meta device to the parameter
totals their publishers state (within each entry's stated tolerance: the figures are rounded), with the
same classes as the family's tiny model: the memory table's sizes are the released models' sizes."""

import pytest

from gal import families
from gal.families.memory import count
from gal.families.published import PUBLISHED, TOLERANCE, parts


@pytest.mark.parametrize(("family", "variant"), list(PUBLISHED), ids=lambda v: v or "-")
def test_published_config_builds_to_the_published_size(family, variant):
    built = parts(family, variant)
    published = PUBLISHED[(family, variant)]
    assert all(p.device.type == "meta" for m in built.values() for p in m.parameters())
    denoiser = count(built["transformer"])
    text = sum(count(m) for k, m in built.items() if k.startswith("text_encoder"))
    for what, got, stated in (
        ("denoiser", denoiser, published.denoiser),
        ("text", text, published.text_encoders),
    ):
        if stated is not None:
            assert abs(got / stated - 1) <= published.tolerance, (
                f"{family} {variant} {what}: {got / 1e9:.2f} B built, {stated / 1e9:.2f} B published "
                f"({published.source})"
            )
    assert published.tolerance <= max(TOLERANCE, 0.12)
    if family in families.FAMILIES:  # the family trains the class it estimates
        family_ = families.get(family)
        tiny = family_.build_tiny()
        assert type(built["transformer"]) is type(family_.denoiser(tiny))
        assert family_.meta_parts(variant).keys() == built.keys()


def test_every_registered_transformer_family_has_a_published_config():
    have = {family for family, _ in PUBLISHED}
    transformer_families = {n for n in families.FAMILIES if families.get(n).denoiser_name == "transformer"}
    # FLUX.1's full-size configs live in bench/gpu/fullsize.py (shared with the GPU benches)
    assert transformer_families - have <= {"flux"}, transformer_families - have
