"""An embedding is a function of its image or text alone, not of what shared its batch (issue 25.3): so a
resumed run, a cache filled in another order, or several processes score exactly as one uninterrupted run."""

import numpy as np
from PIL import Image

from gal.oracle import ClipOracle

TEXTS = ["a star on grass", "a star in the sea", "a star under the night sky", "a star in the clouds",
         "a star on stairs", "a star"]  # fmt: skip


def test_a_text_embedding_does_not_depend_on_its_batch():
    together, alone = ClipOracle.from_spec("tiny"), ClipOracle.from_spec("tiny")
    batched = together.encode_texts(TEXTS)
    one_by_one = np.stack([alone.encode_texts([t])[0] for t in reversed(TEXTS)][::-1])
    assert np.array_equal(batched, one_by_one)  # bit for bit, not allclose
    assert np.array_equal(together.encode_texts(TEXTS[2:4]), batched[2:4])  # from the cache: the same


def test_an_image_embedding_does_not_depend_on_its_batch():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(7)]
    oracle = ClipOracle.from_spec("tiny")
    batched = oracle.encode_images(images)
    one_by_one = np.concatenate([oracle.encode_images([im]) for im in images])
    assert np.array_equal(batched, one_by_one)
    assert np.array_equal(oracle.encode_images(images[3:5]), batched[3:5])
    sims = oracle.text_similarities(images, TEXTS)
    assert np.array_equal(sims[4:], oracle.text_similarities(images[4:], TEXTS[::-1])[:, ::-1])
