"""Untrusted image files and folders: only raster decoders, 16-bit scaled, bounded memory, lost workers, links,
paths through '..', and a split that stays put when files come and go."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from vgg_lightning.data import images
from vgg_lightning.data.datamodule import ImageDataModule
from vgg_lightning.data.image_folders import scan
from vgg_lightning.data.images import decode_files, decode_image, find_files

from .helpers.data import COLOURS, dm_for, write_image, write_tree

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def test_postscript_named_jpg_never_reaches_ghostscript(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError)
    )
    evil = tmp_path / "holiday.jpg"
    evil.write_bytes(POSTSCRIPT)
    with pytest.raises(UnidentifiedImageError):
        decode_image(evil)
    assert calls == []
    assert ".eps" not in images.image_extensions() and ".jpg" in images.image_extensions()


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    values = np.full((40, 40), 32896, dtype=np.uint16)  # 128 * 257: mid grey
    values[:, :20] = 65535
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = decode_image(path, 32)
    assert out.shape == (3, 32, 32)
    assert int(out[0, 16, 28]) == 128 and int(out[0, 16, 2]) == 255  # 8-bit value = 16-bit value / 257


def test_a_large_jpeg_is_shrunk_while_decoding(tmp_path):
    # 9,600 x 9,600 = 92 megapixels: past Pillow's warning threshold (89.5 M), under its error threshold. Decoded
    # whole it would take 276 MB, and 2-3 copies more on the way to 32x32.
    path = tmp_path / "big.jpg"
    Image.new("RGB", (9600, 9600), (200, 120, 40)).save(path, quality=80)
    code = (
        "import resource, sys, warnings; warnings.simplefilter('ignore')\n"
        "from vgg_lightning.data.images import decode_image\n"
        "decode_image(sys.argv[1], 8)  # imports and first use, outside the measurement\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = decode_image(sys.argv[2], 32)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024, out[:, 16, 16].tolist())\n"
    )
    small = tmp_path / "small.png"
    write_image(small, (1, 2, 3))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(small), str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    grown_mb, centre = result.stdout.split(maxsplit=1)
    assert int(grown_mb) < 60, f"peak memory grew by {grown_mb} MB"
    assert all(abs(a - b) <= 3 for a, b in zip(eval(centre), (200, 120, 40)))


def many_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:04d}.png")
        Image.new("RGB", (32, 32), (i % 256, 7, 9)).save(paths[-1])
    return paths


def test_a_worker_killed_mid_decode_costs_one_named_file(tmp_path, monkeypatch):
    files = many_files(tmp_path / "imgs", 300)  # enough for the worker pool
    killer = files[137]
    real = images.decode_image

    def decode_or_die(path, size=32):  # inherited by the forked workers
        if Path(path) == killer:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does
        return real(path, size)

    monkeypatch.setattr(images, "decode_image", decode_or_die)
    decoded, kept, skipped = decode_files(files, 32, workers=2)
    assert kept == [i for i in range(300) if i != 137]
    assert [(p, "died" in why) for p, why in skipped] == [(killer, True)]
    assert [int(v) for v in decoded[:, 0, 0, 0]] == [i % 256 for i in kept]  # every other image, in order


def test_decompression_bombs_through_the_worker_pool_and_in_the_warning_zone(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # inherited by the forked workers
    files = many_files(tmp_path / "imgs", 299)
    bomb, warned = tmp_path / "imgs" / "bomb.png", tmp_path / "imgs" / "warned.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(bomb)  # 10,000 px: over twice the limit, an error
    Image.new("RGB", (60, 60), (250, 2, 3)).save(warned)  # 3,600 px: over the limit, under twice: a warning
    decoded, kept, skipped = decode_files([*files, bomb, warned], 32, workers=2)
    assert [(p.name, why.split(":")[0]) for p, why in skipped] == [("bomb.png", "DecompressionBombError")]
    assert kept == [*range(299), 300] and int(decoded[-1, 0, 0, 0]) == 250


def test_links_in_class_folders_are_followed_once_or_named(tmp_path, capsys):
    root = write_tree(tmp_path / "photos", "train", 3)
    outside = tmp_path / "elsewhere"
    write_image(outside / "extra.png", COLOURS["cat"])
    cat = root / "train" / "cat"
    (cat / "dangling.png").symlink_to(tmp_path / "missing.png")
    (cat / "loop.png").symlink_to(cat / "loop.png")
    (cat / "dogs").symlink_to(root / "train" / "dog")  # another class's images under this class
    (cat / "extra.png").symlink_to(outside / "extra.png")  # outside the data set: followed
    (cat / "extra_again.png").symlink_to(outside / "extra.png")  # the same file twice: once
    (cat / "more").symlink_to(outside)  # a folder outside: followed, its file already taken once
    listing = scan(root / "train", ["bird", "cat", "dog"])
    cats = [f for f, y in zip(listing.files, listing.labels) if y == 1]
    assert cats == ["cat/000.jpg", "cat/001.png", "cat/002.jpg", "cat/extra.png"]
    why = dict(listing.skipped_links)
    assert set(why) == {"cat/dangling.png", "cat/loop.png", "cat/dogs", "cat/extra_again.png", "cat/more/extra.png"}
    assert "dangling" in why["cat/dangling.png"] and "loop" in why["cat/loop.png"]
    assert "count twice" in why["cat/dogs"]
    dm = dm_for(root, tmp_path, val_size=2)
    dm.prepare_data()  # names each skipped link once, then decodes the rest
    err = capsys.readouterr().err
    assert f"skipped {root / 'train' / 'cat' / 'dangling.png'}: a dangling link or a link loop" in err
    assert err.count("skipped ") == 5


def test_predict_path_through_dot_dot_and_hidden_parents(tmp_path, monkeypatch):
    photos = tmp_path / ".hidden_parent" / "photos"
    write_image(photos / "a.png", (1, 2, 3))
    write_image(photos / "sub" / "b.jpg", (1, 2, 3))
    write_image(photos / ".thumbs" / "c.png", (1, 2, 3))  # hidden inside the folder given: left out
    work = tmp_path / ".hidden_parent" / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert [p.name for p in find_files("../photos")] == ["a.png", "b.jpg"]
    assert [p.name for p in find_files("../photos/*.png")] == ["a.png"]


def test_class_folder_split_is_stable_per_file(tmp_path):
    dm = ImageDataModule(dataset="folder", data_dir=str(tmp_path), val_size=10)
    files = [f"c{i % 3}/{i:03d}.png" for i in range(60)]

    def val_of(names):
        index = torch.arange(len(names))
        _, val = dm.split_files(index, index, names)
        return {names[i] for i in val.rows.tolist()}

    before = val_of(files)
    assert len(before) == 10 and val_of(files) == before  # repeatable
    for extra in ("c0/new_a.png", "c1/new_b.png", "c2/new_c.png", "c0/new_d.png"):
        after = val_of([*files, extra])
        moved = (before - after) | (after - before) - {extra}
        assert len(after) == 10 and len(moved) <= 1  # at most one file changes sides, and only if extra is in val
        if extra not in after:
            assert after == before
    a_train_file = next(f for f in files if f not in before)
    assert val_of([f for f in files if f != a_train_file]) == before  # removing a training file moves nothing
    a_val_file = sorted(before)[0]
    after = val_of([f for f in files if f != a_val_file])
    assert len(after) == 10 and len(after - before) == 1 and before - after == {a_val_file}  # one train file joins
