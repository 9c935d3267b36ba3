import pytest
import torch

from vgg_lightning.data import image_sets
from vgg_lightning.data import loader as loader_mod
from vgg_lightning.data.datamodule import ConfigError, ImageDataModule
from vgg_lightning.data.image_sets import ImageSet
from vgg_lightning.data.loader import TensorBatchLoader


def split(data_dir, seed=0, val_size=50):
    dm = ImageDataModule(data_dir=str(data_dir), download=False, val_size=val_size, split_seed=seed, batch_size=32)
    dm.setup("fit")
    return dm


def keys(images):
    """One hashable key per image, to compare sets of images across splits."""
    return {bytes(img.flatten().tolist()) for img in images}


def test_split_is_disjoint_complete_and_seeded(cifar10_dir):
    a, b, c = split(cifar10_dir, 0), split(cifar10_dir, 0), split(cifar10_dir, 1)
    train, val = keys(a.train_set.images()), keys(a.val_set.images())
    assert len(a.val_set.labels) == 50 and len(a.train_set.labels) == 150
    assert not train & val
    dm_all = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=1)
    dm_all.setup("fit")
    everything = keys(dm_all.train_set.images()) | keys(dm_all.val_set.images())
    assert train | val == everything and len(everything) == 200
    assert torch.equal(a.val_set.images(), b.val_set.images())
    assert keys(c.val_set.images()) != val


def test_test_set_is_not_in_train_or_val(cifar10_dir):
    dm = split(cifar10_dir)
    dm.setup("test")
    assert not keys(dm.test_set.images()) & (keys(dm.train_set.images()) | keys(dm.val_set.images()))


def test_splits_are_index_sets_into_one_store(cifar10_dir):
    dm = split(cifar10_dir)
    assert dm.train_set.store is dm.val_set.store  # no copy of the images to split them
    assert dm.train_set.store.data_ptr() == dm.val_set.store.data_ptr()
    assert not set(dm.train_set.rows.tolist()) & set(dm.val_set.rows.tolist())
    assert len(dm.train_set.rows) + len(dm.val_set.rows) == len(dm.train_set.store)
    assert dm.train_set.nbytes == 150 * 3 * 32 * 32


def test_the_data_goes_to_the_gpu_where_it_fits_and_says_so():
    gb = 10**9
    on, line = image_sets.place_on_device(2 * gb, 100 * gb, None, "cuda:0")
    assert on and line.startswith("data: 2.00 GB on cuda:0")
    on, line = image_sets.place_on_device(60 * gb, 100 * gb, None, "cuda:0")  # more than half of what is free
    assert not on and "host memory, gathered a few batches ahead" in line and "data_on_device true" in line
    assert image_sets.place_on_device(60 * gb, 100 * gb, True, "cuda:0")[0]  # asked, and it fits
    assert not image_sets.place_on_device(1 * gb, 100 * gb, False, "cuda:0")[0]
    with pytest.raises(ConfigError, match=r"data's 120.00 GB do not fit in the 100.0 GB free on cuda:0"):
        image_sets.place_on_device(120 * gb, 100 * gb, True, "cuda:0")


def test_a_store_shared_by_two_sets_is_moved_once():
    store, labels = torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10)
    a, b = ImageSet(store, labels, torch.arange(5)), ImageSet(store, labels, torch.arange(5, 10))
    moved = image_sets.move([a, None, b], torch.device("meta"))
    assert moved[1] is None and moved[0].store is moved[2].store and moved[0].store.device.type == "meta"
    assert image_sets.store_bytes([a, b]) == store.numel()


def test_prefetching_loader_gives_the_same_batches_and_stops_with_its_consumer():
    import threading

    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 8, 8).contiguous()
    labels = torch.arange(100)
    kwargs = dict(batch_size=8, shuffle=True, drop_last=True, seed=2, alternate_flip=True)
    plain = TensorBatchLoader(ImageSet(images, labels), **kwargs)
    ahead = TensorBatchLoader(ImageSet(images, labels), prefetch=3, **kwargs)
    for epoch in range(2):
        plain.set_epoch(epoch)
        ahead.set_epoch(epoch)
        for (x1, y1), (x2, y2) in zip(plain, ahead, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    it = iter(ahead)
    next(it)
    assert ahead.batches_served == 1  # counted as handed out, not as gathered ahead
    it.close()  # Lightning stopping mid-epoch (max_steps, a time budget)
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch"]
    broken = TensorBatchLoader(ImageSet(images[:50], labels), prefetch=2, **kwargs)  # rows past the store
    with pytest.raises(IndexError):
        list(broken)


def test_val_size_must_leave_training_images(cifar10_dir):
    with pytest.raises(ConfigError, match="val_size"):
        split(cifar10_dir, val_size=200)


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ImageDataModule(data_dir=str(f))


def test_loader_batches_and_epochs():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32)
    labels = torch.arange(100)
    train = TensorBatchLoader(ImageSet(images, labels), batch_size=32, shuffle=True, drop_last=True, seed=3)
    assert len(train) == 3
    epoch0 = torch.cat([y for _, y in train])
    assert len(epoch0) == 96 and len(set(epoch0.tolist())) == 96
    assert torch.equal(epoch0, torch.cat([y for _, y in train]))  # same epoch, same order
    train.sampler.set_epoch(1)
    assert not torch.equal(epoch0, torch.cat([y for _, y in train]))
    val = TensorBatchLoader(ImageSet(images, labels), batch_size=32, shuffle=False, drop_last=False)
    assert len(val) == 4 and torch.equal(torch.cat([y for _, y in val]), labels)
    x, y = next(iter(val))
    assert x.dtype == torch.uint8 and torch.equal(x[:, 0, 0, 0], y.to(torch.uint8))


def test_each_rank_gets_its_own_shard(monkeypatch):
    labels = torch.arange(103)
    images = torch.zeros(103, 3, 32, 32, dtype=torch.uint8)
    shards = []
    for rank in range(2):
        monkeypatch.setattr(loader_mod, "_rank_and_world", lambda rank=rank: (rank, 2))
        loader = TensorBatchLoader(ImageSet(images, labels), batch_size=10, shuffle=True, drop_last=True, seed=0)
        loader.set_epoch(5)
        shards.append(torch.cat([y for _, y in loader]))
        assert len(loader) == 5
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


class FakeTrainer:
    training = True


def as_uint8(batch: torch.Tensor, dm) -> torch.Tensor:
    """Undo the normalization of a transferred batch."""
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    return ((batch * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` moved by (dy, dx) with zeros coming in: what a crop of the zero-padded image gives."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def transfer(dm, x, y, training=True):
    trainer = FakeTrainer()
    trainer.training = training
    dm.trainer = trainer
    out, _ = dm.on_after_batch_transfer((x, y), 0)
    return out


def test_training_batches_are_augmented_on_transfer(cifar10_dir):
    dm = split(cifar10_dir)
    x, y = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    aug = transfer(dm, x, y)
    plain = transfer(dm, x, y, training=False)
    assert aug.dtype == plain.dtype == torch.float32 and aug.shape == plain.shape == (32, 3, 32, 32)
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    assert torch.allclose(plain, (x.float() / 255 - mean) / std, atol=1e-5)  # evaluation: normalized only
    # Training: each image is a 4-pixel-padded crop of itself, mirrored or not; both kinds occur.
    got = as_uint8(aug, dm)
    moves = [(dy, dx, flip) for dy in range(-4, 5) for dx in range(-4, 5) for flip in (False, True)]
    found = []
    for img, out in zip(x, got):
        match = [m for m in moves if torch.equal(shifted(img.flip(2) if m[2] else img, m[0], m[1]), out)]
        assert match, "a training image is not a shifted (and maybe mirrored) copy of its source"
        found.append(match[0])
    assert any(f for _, _, f in found) and not all(f for _, _, f in found)
    assert len({(dy, dx) for dy, dx, _ in found}) > 5  # crops vary per image
    torch.manual_seed(0)
    assert torch.equal(transfer(dm, x, y), aug)  # seeded


def _mirrored_by_label(loader, images):
    """For each image (its label is its index), whether the loader served it mirrored this epoch."""
    seen = {}
    for x, y in loader:
        for img, i in zip(x, y.tolist()):
            assert torch.equal(img, images[i]) or torch.equal(img, images[i].flip(2))
            seen[i] = torch.equal(img, images[i].flip(2)) and not torch.equal(img, images[i])
    return seen


def test_alternate_flip_shows_each_image_both_ways_in_two_epochs():
    n = 96
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)  # no image is its own mirror
    labels = torch.arange(n)
    loader = TensorBatchLoader(
        ImageSet(images, labels), batch_size=32, shuffle=True, drop_last=True, seed=3, alternate_flip=True
    )
    epochs = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        epochs.append(_mirrored_by_label(loader, images))
    assert sorted(epochs[0]) == list(range(n))
    assert 0.3 < sum(epochs[0].values()) / n < 0.7  # a random half first
    assert all(epochs[1][i] != epochs[0][i] for i in range(n))  # then exactly the others
    assert epochs[2] == epochs[0]
    loader.set_epoch(0)
    assert _mirrored_by_label(loader, images) == epochs[0]  # seeded: the same run flips the same way
    plain = TensorBatchLoader(ImageSet(images, labels), batch_size=32, shuffle=True, drop_last=True, seed=3)
    assert not any(_mirrored_by_label(plain, images).values())


def test_alternate_flip_option(cifar10_dir):
    dm = ImageDataModule(
        data_dir=str(cifar10_dir), download=False, val_size=50, batch_size=32, flip="alternate", crop_padding=0
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.alternate_flip and not dm.val_dataloader().alternate_flip
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        mirrored = loader.mirrored()
        for (x, y), idx in zip(loader, loader.indices().split(32)):
            out = as_uint8(transfer(dm, x, y), dm)
            source = dm.train_set.images()[idx]
            # the images the loader's flags name are mirrored, the others not, and the transfer adds no flip
            expected = torch.where(mirrored[idx][:, None, None, None], source.flip(3), source)
            assert torch.equal(out, expected)
    with pytest.raises(ConfigError, match="data.flip"):
        ImageDataModule(data_dir=str(cifar10_dir), flip="sometimes")


def test_reflect_padding_option(cifar10_dir):
    """``padding_mode reflect`` reaches the training transfer: each crop is a window of the mirrored-border copy."""
    dm = ImageDataModule(
        data_dir=str(cifar10_dir), download=False, val_size=50, batch_size=32, flip=False, padding_mode="reflect"
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    got = as_uint8(transfer(dm, x, y), dm)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    windows = [(dy, dx) for dy in range(9) for dx in range(9)]
    found = [
        [(dy, dx) for dy, dx in windows if torch.equal(p[:, dy : dy + 32, dx : dx + 32], o)]
        for p, o in zip(padded, got)
    ]
    assert all(found), "a training image is not a window of its reflect-padded source"
    assert len({f[0] for f in found}) > 5  # crops vary per image
    with pytest.raises(ConfigError, match="too large to reflect"):
        ImageDataModule(data_dir=str(cifar10_dir), crop_padding=32, padding_mode="reflect")


def test_photos_get_the_resized_crop_by_default_and_cifar_the_shift():
    assert ImageDataModule(dataset="folder", image_size=64).resized_crop
    assert not ImageDataModule(dataset="folder", image_size=32).resized_crop
    assert not ImageDataModule(dataset="folder", image_size=224, crop="pad").resized_crop
    assert not ImageDataModule().resized_crop and ImageDataModule(crop="resized").resized_crop
    with pytest.raises(ConfigError, match="crop_scale"):
        ImageDataModule(crop_scale=(0.5, 1.5))
    with pytest.raises(ConfigError, match="crop_ratio"):
        ImageDataModule(crop_ratio=(0.0, 1.0))


def test_photos_for_the_resized_crop_are_decoded_larger_and_evaluated_whole_at_image_size():
    dm = ImageDataModule(dataset="folder", image_size=64)  # crop_scale 0.35: 64 / sqrt(0.35) = 108.2 -> 112
    assert dm.decode_size == 112
    assert ImageDataModule(dataset="folder", image_size=64, crop="pad").decode_size == 64
    assert ImageDataModule(dataset="folder", image_size=64, decode_size=80).decode_size == 80
    with pytest.raises(ConfigError, match="decode_size"):
        ImageDataModule(dataset="folder", image_size=64, decode_size=48)
    big = torch.arange(112).repeat(2, 3, 112, 1).to(torch.uint8)  # a horizontal ramp
    small = dm.to_image_size(big)
    assert small.shape == (2, 3, 64, 64) and small.dtype == torch.uint8
    assert abs(int(small[0, 0, 0, 0]) - 0) <= 1 and abs(int(small[0, 0, 0, -1]) - 111) <= 1  # the whole image
