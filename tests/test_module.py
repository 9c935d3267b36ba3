import torch

from vgg_lightning.cli import main
from vgg_lightning.module import VGGClassifier

from .helpers.runs import tiny


def test_flip_tta_is_mirror_symmetric():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    plain = VGGClassifier(arch="vgg11", width=0.125).eval()
    tta = VGGClassifier(arch="vgg11", width=0.125, tta_flip=True).eval()
    tta.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain.predict_logits(x), plain.predict_logits(x.flip(3)), atol=1e-5)
        assert torch.allclose(tta.predict_logits(x), tta.predict_logits(x.flip(3)), atol=1e-5)
        assert torch.allclose(tta.predict_logits(x), (plain(x) + plain(x.flip(3))) / 2, atol=1e-5)


def test_no_weight_decay_on_bn_and_biases():
    model = VGGClassifier(arch="vgg11", width=0.125, head_hidden=16)
    model.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    opt = model.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.net.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


def test_ema_is_trained_saved_and_used(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(cifar10_dir, "--trainer.max_epochs", "1", "--model.ema_decay", "0.9")
    assert main(["fit", *args]) == 0
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    model = VGGClassifier.load_from_checkpoint(path, weights_only=True).eval()
    assert int(model.ema.n_averaged) == 10  # one update per step: 160 images / batch 16
    ema_w, net_w = model.ema.module.features[0].weight, model.net.features[0].weight
    assert not torch.equal(ema_w, net_w)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.ema.module(x))  # evaluation runs the averaged weights
    assert model.eval_net() is model.ema.module


def test_runtime_options_on_the_command_line_beat_the_checkpoint(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    fit_args = tiny(
        cifar10_dir,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--model.width",
        "0.25",
        "--model.tta_flip",
        "false",
    )
    assert main(["fit", *fit_args]) == 0
    # No --model.width here: the architecture comes from the checkpoint; --model.tta_flip from the command line.
    args = [a for a in tiny(cifar10_dir, "--ckpt_path", "last", "--model.tta_flip", "true") if a != "0.125"]
    args.remove("--model.width")
    assert main(["test", *args]) == 0
    used = (run / "test_config.yaml").read_text()
    assert "tta_flip: true" in used and "width: 0.25" in used
    assert main(["test", *args[:-2]]) == 0  # not given: the checkpoint's value
    assert "tta_flip: false" in (run / "test_config.yaml").read_text()


def test_tta_final_mirrors_only_the_last_validation_of_fit(cifar10_dir, tmp_path, monkeypatch):
    import lightning as L

    from vgg_lightning.data.datamodule import ImageDataModule

    seen = []
    real = VGGClassifier.tta_now

    def spy(self):
        used = real(self)
        seen.append((self.trainer.state.fn, self.trainer.sanity_checking, self.trainer.current_epoch, used))
        return used

    monkeypatch.setattr(VGGClassifier, "tta_now", spy)

    class StopAtStep3(L.Callback):  # as a time budget stops: should_stop mid-epoch, then the last validation
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step == 3

    def run(*callbacks, **limits):
        dm = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=40, batch_size=16)
        model = VGGClassifier(arch="vgg11", width=0.125, tta_flip="final")
        trainer = L.Trainer(
            default_root_dir=tmp_path,
            limit_train_batches=2,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
            **limits,
        )
        trainer.fit(model, dm)
        return trainer, model, dm

    seen.clear()
    run(max_epochs=3)
    assert [(sanity, epoch, used) for _, sanity, epoch, used in seen] == [
        (True, 0, False),
        (False, 0, False),
        (False, 1, False),
        (False, 2, True),
    ]
    seen.clear()
    trainer, model, dm = run(StopAtStep3(), max_epochs=10)
    assert [(epoch, used) for _, sanity, epoch, used in seen if not sanity] == [(0, False), (1, True)]
    seen.clear()
    trainer.validate(model, dm, verbose=False)
    assert [used for *_, used in seen] == [True]  # evaluation commands always mirror
    assert real(VGGClassifier(arch="vgg11", width=0.125, tta_flip="final"))  # no trainer: classify(), scripts


def test_checkpoints_from_before_the_rename_keep_their_data_module_state():
    from vgg_lightning.module import VGGClassifier

    model = VGGClassifier(arch="vgg11", width=0.125)
    state = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "train_loader": {"epoch": 2, "batches_served": 7}}
    checkpoint = {"CIFARDataModule": state}  # what Lightning wrote under the data module's old class name
    model.on_load_checkpoint(checkpoint)
    assert checkpoint["ImageDataModule"] == state  # where Lightning now restores the data module from
