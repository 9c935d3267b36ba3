import pytest
import torch
import torch.nn.functional as F

from vgg_lightning.data.augment import cutout, normalize, random_crop, random_flip, train_augment


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
