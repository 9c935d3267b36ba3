import pytest
import torch
import torch.nn.functional as F

from vgg_lightning.data.augment import (
    cutout,
    normalize,
    random_crop,
    random_flip,
    random_resized_crop,
    random_window,
    resize,
    train_augment,
)


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_is_a_window_of_the_padded_image(mode):
    x = batch()
    out = random_crop(x, 4, torch.Generator().manual_seed(1), mode)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4), mode=mode)
    offsets = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert found, f"image {i} is not a 32x32 window of its padded copy"
        offsets.add(found[0])
    assert len(offsets) > 1, "every image got the same crop: not per-image"


def test_reflect_padding_adds_no_black_edges():
    x = batch(n=64)  # inputs are never 0
    crops = {mode: random_crop(x, 2, torch.Generator().manual_seed(0), mode) for mode in ("constant", "reflect")}
    assert (crops["constant"] == 0).any() and not (crops["reflect"] == 0).any()


def test_crop_zero_padding_is_identity():
    x = batch()
    assert torch.equal(random_crop(x, 0), x)


def test_flip_really_flips_about_half():
    x = batch(n=256)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ kept).all())
    assert 90 < int(flipped.sum()) < 166


def test_cutout_zeroes_one_square_per_image():
    x = batch(n=64)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(dim=1)  # (n, h, w): pixels zeroed in every channel (inputs are never 0)
    per_image = zeros.flatten(1).sum(1)
    assert bool((per_image > 0).all()) and bool((per_image <= 64).all())
    assert (per_image == 64).any()  # an unclipped square
    assert torch.equal(out[~zeros[:, None].expand_as(out)], x[~zeros[:, None].expand_as(x)])


def test_seeded_runs_repeat_and_seeds_differ():
    x = batch()
    a = train_augment(x, 4, True, 8, torch.Generator().manual_seed(7))
    b = train_augment(x, 4, True, 8, torch.Generator().manual_seed(7))
    c = train_augment(x, 4, True, 8, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_matches_the_formula():
    x = batch(n=4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalize(x, mean, std, memory_format=torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


# -- random-resized crop (photos) ------------------------------------------------------------------------------------
def ramp(n=8, size=64):
    """Images whose pixel values say where they are: channel 0 the column, channel 1 the row, channel 2 the image."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    one = torch.stack([xs * 255 // (size - 1), ys * 255 // (size - 1), torch.zeros_like(xs)])
    return torch.stack([torch.cat([one[:2], one[2:] + i]) for i in range(n)]).to(torch.uint8)


def test_resized_crop_takes_its_own_window_from_each_image_within_the_ranges():
    x = ramp(n=64, size=64)
    out = random_resized_crop(x, 32, (0.25, 0.5), (0.75, 1.3333), torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 2], x[:, 2, :32, :32])  # each output comes from its own image
    # the window each image got, read back from the column and row ramps
    width = (out[:, 0, :, -1].float().mean(1) - out[:, 0, :, 0].float().mean(1)) * 63 / 255 * 32 / 31
    height = (out[:, 1, -1, :].float().mean(1) - out[:, 1, 0, :].float().mean(1)) * 63 / 255 * 32 / 31
    area = width * height / 64**2
    assert area.min() > 0.2 and area.max() < 0.56, (area.min(), area.max())
    ratio = width / height
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    assert width.std() > 1 and out[:, 0, 0, 0].float().std() > 5  # sizes and positions differ per image


def test_resized_crop_of_the_whole_image_at_its_own_size_is_the_image():
    x = ramp(n=4, size=48)
    out = random_resized_crop(x, 48, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert (out.int() - x.int()).abs().max() <= 1


def test_resized_crop_is_seeded():
    x = batch(n=8)
    a = random_resized_crop(x, 32, generator=torch.Generator().manual_seed(5))
    b = random_resized_crop(x, 32, generator=torch.Generator().manual_seed(5))
    c = random_resized_crop(x, 32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_augment_uses_the_resized_crop_when_asked():
    x = ramp(n=16, size=64)
    out = train_augment(x, crop_padding=4, flip=False, resized_crop=((0.3, 0.3), (1.0, 1.0)), size=64)
    spans = out[:, 0, :, -1].float().mean(1) - out[:, 0, :, 0].float().mean(1)
    assert out.shape == x.shape and bool((spans < 0.6 * 255).all())  # about sqrt(0.3) of the width: zoomed in


def test_a_smaller_size_takes_a_window_of_each_shifted_image_at_its_scale():
    x = batch()
    out = train_augment(x, crop_padding=0, flip=False, size=24, generator=torch.Generator().manual_seed(2))
    assert out.shape == (16, 3, 24, 24)
    offsets = set()
    for i in range(len(x)):
        windows = [(dy, dx) for dy in range(9) for dx in range(9)]
        found = [(dy, dx) for dy, dx in windows if torch.equal(x[i, :, dy : dy + 24, dx : dx + 24], out[i])]
        assert found, f"image {i} is not a 24x24 window of itself"
        offsets.add(found[0])
    assert len(offsets) > 1, "every image got the same window: not per-image"
    assert torch.equal(random_window(x, 32), x)  # the whole image is its only window
    small = train_augment(ramp(n=4, size=64), 0, False, resized_crop=((0.5, 1.0), (0.75, 1.33)), size=40)
    assert small.shape == (4, 3, 40, 40)  # the resized crop is made at the smaller size


def test_downscale_shrinks_the_whole_shifted_image_instead_of_taking_a_window():
    x = ramp(n=4, size=32)  # columns 0..255 left to right
    out = train_augment(x, crop_padding=0, flip=False, size=24, downscale=True)
    assert out.shape == (4, 3, 24, 24)
    assert torch.equal(out, resize(x, 24))
    # the whole ramp, squeezed: the first and last columns still near its ends (a 24-wide window would lose
    # a quarter of its span)
    assert int(out[0, 0, 0, 0]) < 12 and int(out[0, 0, 0, -1]) > 243
    assert torch.equal(resize(x, 32), x)  # the image's own size: unchanged
