"""Callbacks the tests put into real CLI runs."""

import lightning as L


class StopAfterEpoch(L.Callback):
    """Ends fit cleanly after the given epoch, as an interrupted run would have stopped there."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True


class PoisonWeights(L.Callback):
    """Sets the first conv's weights to NaN from the given epoch on, as a diverging run would."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.epoch:
            import torch

            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.ndim == 4).fill_(float("nan"))


class ValidationSteps(L.Callback):
    """Appends the global step of each validation (not the sanity check) to ``ValidationSteps.seen``: in-process
    runs read it after ``main`` returns."""

    seen: list[int] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            ValidationSteps.seen.append(trainer.global_step)


class ImageSides(L.Callback):
    """The side of each training batch's images (one entry per batch), and the sides validation saw."""

    def __init__(self) -> None:
        self.train: list[int] = []
        self.val: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(int(batch[0].shape[-1]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.add(int(batch[0].shape[-1]))


class RecordRank(ImageSides):
    """Writes what each DDP rank saw to rank<N>.json in the working directory."""

    def __init__(self) -> None:
        super().__init__()
        self.record = {"indices": [], "val_acc": []}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.record["indices"].append(trainer.train_dataloader.indices().tolist())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.record["val_acc"].append(float(trainer.callback_metrics["val/acc"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        import json

        self.record["world_size"] = trainer.world_size
        self.record["sides"] = self.train
        with open("/proc/self/maps") as maps:  # the cache files this rank reads its images from
            self.record["mapped"] = sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".pixels")})
        self.record["global_step"] = trainer.global_step
        self.record["lr"] = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.record["weights_sum"] = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        from vgg_lightning.callbacks.lookahead import Lookahead, lookahead_tensors

        slow = next((cb.slow for cb in trainer.callbacks if isinstance(cb, Lookahead)), None)
        if slow is not None:  # Lookahead: whether this rank ended on its slow copy (parameters come first)
            fast = lookahead_tensors(pl_module)
            same = [bool((a == b).all()) for a, b in zip(slow, fast)]
            self.record["on_slow_copy"] = all(same)
            self.record["params_on_slow_copy"] = all(same[: len(list(pl_module.net.parameters()))])
        with open(f"rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.record, f)


class BlockRank1(L.Callback):
    """Rank 1 waits, inside a collective-style receive that never comes, from global step 3 on: a hung process."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os

        import torch

        if trainer.global_rank == 1 and trainer.global_step == 3:
            with open("stuck", "w") as f:
                f.write(str(os.getpid()))
            torch.distributed.recv(torch.zeros(1), src=0)  # blocks in C: Python's signal handlers never run


class SigtermAt(L.Callback):
    """Stops fit as a SIGTERM would (Lightning's SIGTERMException) after the given global step: the run saves a
    resumable mid-epoch checkpoint and ends."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if trainer.global_step >= self.step:
            raise SIGTERMException()
