"""The training and evaluation loader: batches gathered from uint8 image sets, seeded, shardable, stateful, and
(for sets read from a mapped file or copied to a GPU) gathered a few batches ahead in a background thread."""

from __future__ import annotations

import math
import queue
import threading
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from vgg_lightning.data.image_sets import ImageSet


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TensorBatchLoader:
    """Yields ``(images, labels)`` batches gathered from an ImageSet.

    Each epoch's order is a permutation seeded by ``(seed, epoch)``, so resumed runs see the same order as
    uninterrupted ones. Under DDP each rank takes every world_size-th index of that permutation: its own shard,
    all shards equally long. Lightning calls ``sampler.set_epoch`` on it before each epoch, as on a DataLoader.

    It is stateful (``state_dict``/``load_state_dict``; the data module carries the state through checkpoints):
    a run resumed from a mid-epoch checkpoint (Ctrl-C, SIGTERM) goes on with the batches that epoch had not seen.

    ``alternate_flip``: mirror each image in every other epoch (airbench's alternating flip). Epoch 0 mirrors a
    seeded random half; each later epoch mirrors exactly the images the previous one did not, so every image is
    seen both ways in any two epochs in a row (random flips leave a quarter of them one-sided). The flip is done
    here because only the loader knows which image is which.

    ``prefetch``: batches gathered ahead by a background thread (0: each when asked for). Gathering rows from a
    memory-mapped cache reads the disk or the page cache, and a copy to a GPU overlaps the step only from pinned
    memory (``pin_memory``; Lightning copies with ``non_blocking``): the thread does both while the step runs.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        alternate_flip: bool = False,
        prefetch: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.data, self.labels = data, data.labels
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.alternate_flip = alternate_flip
        self.epoch = 0
        self.sampler = self  # where Lightning looks for set_epoch
        self.batch_sampler = None  # no torch sampler inside: Lightning leaves this loader as it is
        self.batches_served = 0  # of the current epoch's iteration
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches already served) from a checkpoint

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_served"]))

    def _shard_size(self) -> int:
        _, world = _rank_and_world()
        n = len(self.labels)
        # Training drops the tail so every rank has the same number of images; evaluation pads it by repeating
        # the first images, as DistributedSampler does.
        return n // world if self.drop_last else math.ceil(n / world)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, in order."""
        rank, world = _rank_and_world()
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self._shard_size() * world
        order = order[:total] if total <= n else torch.cat([order, order[: total - n]])
        return order[rank::world].to(self.labels.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]  # the same permutation, from where the interrupted run stopped
        self._resume = None
        self.batches_served = start
        batches = self._batches(start)
        if self.prefetch > 0:
            batches = _ahead(batches, self.prefetch)
        for i, batch in enumerate(batches, start):
            self.batches_served = i + 1  # counted as handed out, not as gathered ahead
            yield batch

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        mirrored = self.mirrored() if self.alternate_flip else None
        for i in range(start, len(self)):
            sel = idx[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.data.images(sel)
            if mirrored is not None:
                images = torch.where(mirrored[sel][:, None, None, None], images.flip(3), images)
            labels = self.labels[sel]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels

    def mirrored(self) -> torch.Tensor:
        """Which images (by index) the alternating flip mirrors in the current epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919)  # one draw for the whole run
        first = torch.rand(len(self.labels), generator=g) < 0.5
        return (first ^ bool(self.epoch % 2)).to(self.labels.device)


def _ahead(batches: Iterator, depth: int) -> Iterator:
    """``batches``, produced by a background thread up to ``depth`` ahead of the consumer (torch's gather and copy
    release the GIL). An exception in the thread is raised here; a consumer that stops early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # handed to the consumer
            q.put((done, e))

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
