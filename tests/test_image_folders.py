"""Class folders as a data set: tiny trees written here (PNG and JPEG, odd sizes, grey and RGBA, broken files)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgg_lightning.cli import main
from vgg_lightning.data import image_folders, pixel_cache
from vgg_lightning.errors import DataError

from .helpers.data import COLOURS, dm_for, tiny_folder_args, write_image, write_tree

# Each class has its own colour, so a net can learn the tree.


@pytest.fixture
def tree(tmp_path) -> Path:
    """train/ (3 classes x 12 images, plus a corrupt file, a .txt and a .DS_Store) and test/ (3 x 4)."""
    root = write_tree(tmp_path / "photos", "train", 12)
    write_tree(root, "test", 4, seed=1)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_classes_labels_and_decoding(tree, tmp_path, capsys):
    dm = dm_for(tree, tmp_path)
    assert dm.num_classes == 3 and dm.class_names == ["bird", "cat", "dog"]  # folder names, sorted
    dm.prepare_data()
    dm.setup("fit")
    err = capsys.readouterr().err
    assert "broken.jpg: not a readable image" in err  # named on its own line
    assert "1 unreadable file skipped" in err and "2 non-image files ignored" in err  # .txt and .DS_Store
    images = torch.cat([dm.train_set.images(), dm.val_set.images()])
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert images.shape == (36, 3, 32, 32) and images.dtype == torch.uint8  # odd sizes, grey and RGBA: all 32x32 RGB
    assert len(dm.val_set.labels) == 6
    for label, name in enumerate(dm.class_names):
        mean = images[labels == label].float().mean((0, 2, 3))
        grey = np.mean(COLOURS[name])  # grey images pull the mean towards the grey value
        expected = torch.tensor([0.75 * v + 0.25 * grey for v in COLOURS[name]], dtype=torch.float)
        assert torch.allclose(mean, expected, atol=25), (name, mean)
    # normalization: the training images' own per-channel statistics
    assert dm.mean is not None and abs(dm.mean[0] - images[:, 0].float().mean().item() / 255) < 0.02


def test_grey_images_become_three_equal_channels(tmp_path):
    from vgg_lightning.data.images import load_image

    write_image(tmp_path / "g.png", (100, 150, 200), (50, 37), mode="L")
    x = load_image(tmp_path / "g.png", 32)
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_the_cache_is_hit_rebuilt_on_change_and_never_trusted_when_garbled(tree, tmp_path, monkeypatch, capsys):
    names = image_folders.class_names(tree)
    cache = tmp_path / "cache"
    first = image_folders.load_split(tree, "train", names, 32, cache)
    base = image_folders.cache_base(cache, tree / "train", 32)
    assert sorted(p.name for p in cache.iterdir()) == [f"{base.name}.meta.pt", f"{base.name}.pixels"]
    assert (cache / f"{base.name}.pixels").stat().st_size == first.images.numel()  # the raw rows, nothing else

    decoded = []
    real_decode = image_folders.decode_files
    monkeypatch.setattr(image_folders, "decode_files", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    again = image_folders.load_split(tree, "train", names, 32, cache)
    assert not decoded and torch.equal(again.images, first.images) and again.files == first.files  # a hit

    write_image(tree / "train" / "dog" / "new.png", COLOURS["dog"], seed=99)  # an added file
    added = image_folders.load_split(tree, "train", names, 32, cache)
    assert len(decoded) == 1 and len(added.files) == len(first.files) + 1
    write_image(tree / "train" / "dog" / "new.png", COLOURS["cat"], (60, 60), seed=98)  # a changed file
    image_folders.load_split(tree, "train", names, 32, cache)
    assert len(decoded) == 2
    image_folders.load_split(tree, "train", names, 48, cache)  # another image size: its own cache
    assert len(decoded) == 3 and len(list(cache.iterdir())) == 4

    pixels, meta = pixel_cache.pixel_path(base), pixel_cache.meta_path(base)
    current = image_folders.load_split(tree, "train", names, 32, cache).images.clone()
    raw = bytearray(pixels.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one garbled byte among the pixels: its chunk is decoded again, in place
    pixels.write_bytes(bytes(raw))
    capsys.readouterr()
    repaired = image_folders.load_split(tree, "train", names, 32, cache)
    assert len(decoded) == 4 and "1 garbled chunk (37 images); decoding them again" in capsys.readouterr().err
    assert torch.equal(repaired.images, current) and pixels.read_bytes() != bytes(raw)
    meta.write_bytes(meta.read_bytes()[:1000])  # a truncated meta file: rebuilt
    assert torch.equal(image_folders.load_split(tree, "train", names, 32, cache).images, current)
    assert len(decoded) == 5 and "stale or unreadable" in capsys.readouterr().err
    pixels.write_bytes(pixels.read_bytes()[:-3072])  # a pixel file one image short: rebuilt
    assert torch.equal(image_folders.load_split(tree, "train", names, 32, cache).images, current)
    assert len(decoded) == 6 and "wrong length" in capsys.readouterr().err


def test_cache_never_runs_code(tree, tmp_path):
    """The cache is read with weights_only=True: a file whose pickle names a callable is refused and rebuilt."""
    import pickle
    import zipfile

    names = image_folders.class_names(tree)
    cache = tmp_path / "cache"
    image_folders.load_split(tree, "train", names, 32, cache)
    path = pixel_cache.meta_path(image_folders.cache_base(cache, tree / "train", 32))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = pickle.dumps(Evil(), protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    image_folders.load_split(tree, "train", names, 32, cache)
    assert not marker.exists()


def test_data_dir_stays_untouched_and_an_unwritable_cache_only_costs_time(tree, tmp_path, capsys):
    before = sorted((p, p.stat().st_mtime_ns) for p in tree.rglob("*"))
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    dm = dm_for(tree, tmp_path, cache_dir=str(blocked / "cache"))  # cannot be created: a file is in the way
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set.labels) == 30
    assert "could not write the cache" in capsys.readouterr().err
    assert sorted((p, p.stat().st_mtime_ns) for p in tree.rglob("*")) == before


def test_val_folder_is_the_validation_set(tree, tmp_path):
    write_tree(tree, "val", 2, seed=2)
    dm = dm_for(tree, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set.labels) == 36 and len(dm.val_set.labels) == 6  # all of train/, and val/ as it is


def test_decompression_bomb_is_one_skipped_file(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 40x30 and the like pass; 100x100 is a "bomb"
    write_image(tree / "train" / "bird" / "bomb.png", COLOURS["bird"], (100, 100))
    dm = dm_for(tree, tmp_path)
    dm.prepare_data()
    err = capsys.readouterr().err
    assert "bomb.png: not a readable image (DecompressionBombError" in err


def layout_error(root: Path, tmp_path: Path) -> str:
    with pytest.raises(DataError) as e:
        dm = dm_for(root, tmp_path)
        dm.num_classes  # noqa: B018
        dm.prepare_data()
    message = str(e.value)
    assert "DIR/train/<class name>/<image files>" in message  # shows the expected layout
    return message


def test_layout_errors_name_the_folder(tmp_path):
    assert "has no train/ folder" in layout_error(write_tree(tmp_path / "a", "test", 2), tmp_path)
    assert "does not exist" in layout_error(tmp_path / "nowhere", tmp_path)
    assert "at least two" in layout_error(write_tree(tmp_path / "b", "train", 2, classes=("cat",)), tmp_path)
    only_broken = write_tree(tmp_path / "c", "train", 2, classes=("cat", "dog"))
    for f in (only_broken / "train" / "dog").iterdir():
        f.write_bytes(b"garbage")
    assert "no readable image in class folder dog" in layout_error(only_broken, tmp_path)
    extra = write_tree(tmp_path / "d", "train", 2, classes=("cat", "dog"))
    write_tree(extra, "val", 1, classes=("bird",))
    assert "class folders that train/ lacks: bird" in layout_error(extra, tmp_path)


def test_cli_fit_validate_test_predict_on_folders(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_folder_args(tree, tmp_path, "--trainer.max_epochs", "2")]) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["class_names"] == ["bird", "cat", "dog"] and ckpt["hyper_parameters"]["num_classes"] == 3
    capsys.readouterr()
    # The evaluation commands take the data set from the checkpoint's run: no --data options needed.
    assert main(["validate"]) == 0
    assert main(["test"]) == 0
    out = capsys.readouterr().out
    assert "Test results on 12 images" in out and "cat" in out
    assert main(["predict", "--data.predict_path", str(tree / "test" / "dog")]) == 0
    out = capsys.readouterr().out
    rows = (run / "predictions.csv").read_text().splitlines()
    assert len(rows) == 5 and all(r.split(",")[1] in COLOURS for r in rows[1:])  # named classes, not indices


def test_cli_without_a_train_folder_exits_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = write_tree(tmp_path / "photos", "test", 2)
    assert main(["fit", *tiny_folder_args(root, tmp_path, "--trainer.max_epochs", "1")]) == 1
    err = capsys.readouterr().err
    assert "has no train/ folder" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_test_without_a_test_folder_says_so(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import shutil

    shutil.rmtree(tree / "test")
    assert main(["fit", *tiny_folder_args(tree, tmp_path, "--trainer.max_epochs", "1")]) == 0
    assert main(["test"]) == 1
    assert "has no test/ folder" in capsys.readouterr().err


def test_a_64_pixel_net_end_to_end(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_folder_args(tree, tmp_path, "--data.image_size", "64", "--trainer.max_epochs", "1")
    assert main(["fit", *args]) == 0
    from vgg_lightning import VGGClassifier

    path = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    model = VGGClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert model.hparams.image_size == 64
    label, prob = model.classify(tree / "test" / "cat" / "000.jpg")  # read at 64x64, as trained
    assert label in COLOURS and 0 < prob <= 1
    assert main(["predict", "--data.predict_path", str(tree / "test")]) == 0
    from vgg_lightning.export import export

    out = export("last", format="torchscript")
    traced = torch.jit.load(str(out))
    assert traced(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 3)


def test_an_interrupted_build_leaves_no_cache_that_looks_complete(tree, tmp_path, monkeypatch):
    names = image_folders.class_names(tree)
    cache = tmp_path / "cache"
    real_decode = image_folders.decode_files

    def killed(files, size, workers, out=None):
        real_decode(files[:5], size, workers, out=out[:5])  # some rows written, then the build dies
        raise KeyboardInterrupt

    monkeypatch.setattr(image_folders, "decode_files", killed)
    with pytest.raises(KeyboardInterrupt):
        image_folders.load_split(tree, "train", names, 32, cache)
    assert list(cache.iterdir()) == []  # no pixel file, no meta file, no temporary file
    monkeypatch.setattr(image_folders, "decode_files", real_decode)
    split = image_folders.load_split(tree, "train", names, 32, cache)
    assert len(split.labels) == 36 and len(list(cache.iterdir())) == 2


def test_a_full_disk_is_said_before_decoding_and_the_run_goes_on_from_memory(tree, tmp_path, monkeypatch, capsys):
    import errno

    names = image_folders.class_names(tree)

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_folders.pixel_cache.os, "posix_fallocate", no_room)
    decoded = []
    real_decode = image_folders.decode_files
    monkeypatch.setattr(
        image_folders, "decode_files", lambda *a, **k: decoded.append(k.get("out")) or real_decode(*a, **k)
    )
    split = image_folders.load_split(tree, "train", names, 32, tmp_path / "cache")
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "this run decodes into memory" in err
    assert decoded == [None] and len(split.labels) == 36  # decoded once, into memory, after the message
    assert list((tmp_path / "cache").iterdir()) == []


def test_photos_smaller_than_the_crop_range_asks_for_are_stored_at_their_own_size(tmp_path, monkeypatch):
    # 32 px at crop_scale 0.35 asks for 56 px; these photos' short sides are 40-45 px (median 42.5: 42 -> 40)
    for c, name in enumerate(COLOURS):
        for i in range(6):
            write_image(tmp_path / "d" / "train" / name / f"{i}.png", COLOURS[name], (60, 40 + i), seed=c * 10 + i)
    scans = []
    scan = image_folders.scan
    monkeypatch.setattr(image_folders, "scan", lambda *a: scans.append(a[0]) or scan(*a))
    dm = dm_for(tmp_path / "d", tmp_path, crop="resized", val_size=3)
    assert dm.photos_decoded_small() and dm.decode_size == 40
    dm.prepare_data()
    dm.setup("fit")
    assert scans == [tmp_path / "d" / "train"]  # the folder is listed once: sizing the decode and loading share it
    monkeypatch.undo()
    assert tuple(dm.train_set.images().shape[1:]) == (3, 40, 40)
    # the same photos where the crop range asks for less than they have: decoded at the asked size
    wide = dm_for(tmp_path / "d", tmp_path, crop="resized", crop_scale=(0.8, 1.0), val_size=3)
    assert wide.decode_size == 40 and not wide.photos_decoded_small()  # 32 / sqrt(0.8) = 35.8 -> 40
    assert dm_for(tmp_path / "d", tmp_path, crop="resized", decode_size=64).decode_size == 64  # asked: kept
    assert dm_for(tmp_path / "d", tmp_path, crop="pad").decode_size == 32
