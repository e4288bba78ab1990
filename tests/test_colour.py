"""Colour matching of long-clip windows to the start image, on real photos (scikit-image's), checked with
scikit-image's own CIELAB conversion (an implementation independent of the OpenCV one we use)."""

from __future__ import annotations

import numpy as np
import pytest

skimage = pytest.importorskip("skimage")
from skimage import color, data  # noqa: E402

from anytalker_core.errors import InputError  # noqa: E402
from anytalker_core.generation.colour import delta_e76, lab_stats, lab_to_rgb, match_colour, rgb_to_lab  # noqa: E402

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def _skimage_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = color.rgb2lab(frames.reshape(-1, frames.shape[-2], 3)).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def _cast(image: np.ndarray, gain, bias) -> np.ndarray:
    """A colour cast like a drifting VAE round trip: per-channel gain and offset."""
    return np.clip(image.astype(np.float64) * gain + bias, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_lab_conversion_agrees_with_scikit_image(name):
    image = PHOTOS[name]()
    ours = rgb_to_lab(image)
    ref = color.rgb2lab(image)
    assert np.abs(ours - ref).max() < 0.6 and np.abs(ours - ref).mean() < 0.1
    assert np.abs(lab_to_rgb(ours).astype(int) - image).max() <= 1  # round trip


@pytest.mark.parametrize("name", list(PHOTOS))
def test_matching_removes_a_colour_cast(name):
    start = PHOTOS[name]()
    # a window of 4 frames that drifted: warmer, darker, less contrast, each a little differently
    window = np.stack([_cast(start, [1.12 + 0.01 * i, 0.97, 0.82], [12 - i, 2, -6]) for i in range(4)])
    target_mean, target_std = _skimage_stats(start)
    before_mean, _ = _skimage_stats(window)
    assert np.linalg.norm(before_mean - target_mean) > 8  # a clearly visible cast (ΔE76 of the mean colour)

    matched = match_colour(window, lab_stats(start))
    after_mean, after_std = _skimage_stats(matched)
    assert np.linalg.norm(after_mean - target_mean) < 2.0  # below a just-noticeable difference
    np.testing.assert_allclose(after_std, target_std, rtol=0.12)
    # one transform for the whole window: frame order and relative differences survive
    assert matched.shape == window.shape and matched.dtype == np.uint8
    assert delta_e76(lab_stats(matched[:1]), lab_stats(matched[3:])) < delta_e76(lab_stats(window[:1]),
                                                                                  lab_stats(window[3:])) + 0.5


def test_matching_an_image_to_itself_changes_almost_nothing():
    start = data.astronaut()
    same = match_colour(start[None], lab_stats(start))[0]
    assert np.abs(same.astype(int) - start).mean() < 1.0


def test_strength_zero_is_the_identity_and_half_is_half_way():
    start, other = data.astronaut(), data.coffee()[:512, :512]
    assert np.abs(match_colour(other[None], lab_stats(start), strength=0.0)[0].astype(int) - other).mean() < 1.0
    half = match_colour(other[None], lab_stats(start), strength=0.5)
    mid = (lab_stats(start).mean + lab_stats(other).mean) / 2
    assert delta_e76(lab_stats(half), mid) < 2.5


def test_bad_frames_are_refused():
    with pytest.raises(InputError, match="uint8 RGB frames"):
        match_colour(np.zeros((2, 8, 8, 3), np.float32), lab_stats(data.astronaut()))
    with pytest.raises(InputError, match="between 0 and 1"):
        match_colour(data.astronaut()[None], lab_stats(data.astronaut()), strength=2.0)
