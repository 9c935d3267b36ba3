import torch
import yaml

from vgg_lightning.cli import main
from vgg_lightning.module import VGGClassifier

from .helpers.runs import tiny


def test_flip_tta_is_mirror_symmetric():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    plain = VGGClassifier(net=dict(arch="vgg11", width=0.125)).eval()
    tta = VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(flip=True)).eval()
    tta.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain.predict_logits(x), plain.predict_logits(x.flip(3)), atol=1e-5)
        assert torch.allclose(tta.predict_logits(x), tta.predict_logits(x.flip(3)), atol=1e-5)
        assert torch.allclose(tta.predict_logits(x), (plain(x) + plain(x.flip(3))) / 2, atol=1e-5)


def test_no_weight_decay_on_bn_and_biases():
    model = VGGClassifier(net=dict(arch="vgg11", width=0.125, head_hidden=16))
    model.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    opt = model.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.net.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


EMA = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.9"]


def test_ema_is_lightnings_callback_updated_per_optimizer_step(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.accumulate_grad_batches", "2", *EMA)
    assert main(["fit", *args]) == 0
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 5  # 10 batches, 2 a step: once per optimizer step
    key = "net.features.0.weight"
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    model = VGGClassifier.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(model.net.features[0].weight, ckpt["state_dict"][key])  # evaluation runs the average
    assert main(["test", *tiny(cifar10_dir), "--ckpt_path", str(path)]) == 0


def test_checkpoints_with_flat_options_and_the_models_own_ema_still_load(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")]) == 0
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    net = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    averaged = {k: v + 0.5 if v.is_floating_point() else v for k, v in net.items()}
    ckpt["state_dict"].update({f"ema.module.{k}": v for k, v in averaged.items()})  # as model.ema_decay saved it
    ckpt["state_dict"]["ema.n_averaged"] = torch.tensor(2)
    # the flat options of that time, with the EMA among them
    saved = ckpt["hyper_parameters"]
    flat = {**saved["net"], **{k: v for k, v in saved["optim"].items() if k != "name"}}
    flat.update(optimizer=saved["optim"]["name"], tta_flip=saved["tta"]["flip"], tta_shift=saved["tta"]["shift"])
    flat.update({k: v for k, v in saved.items() if k not in ("net", "optim", "tta")})
    ckpt["hyper_parameters"] = {**flat, "ema_decay": 0.9, "lookahead": 0.0, "lookahead_every": 5}
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy)
    model = VGGClassifier.load_from_checkpoint(legacy, weights_only=True)
    assert torch.equal(model.net.features[0].weight, averaged["features.0.weight"])
    assert (model.net_options.arch, model.net_options.width) == ("vgg11", 0.125)  # regrouped, not defaults
    assert main(["test", *tiny(cifar10_dir), "--ckpt_path", str(legacy)]) == 0


def test_runtime_options_on_the_command_line_beat_the_checkpoint(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    fit_args = tiny(
        cifar10_dir,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--model.net.width",
        "0.25",
        "--model.tta.flip",
        "false",
    )
    assert main(["fit", *fit_args]) == 0
    # No --model.net.width here: the architecture comes from the checkpoint; --model.tta.flip from the command line.
    args = [a for a in tiny(cifar10_dir, "--ckpt_path", "last", "--model.tta.flip", "true") if a != "0.125"]
    args.remove("--model.net.width")
    assert main(["test", *args]) == 0
    used = yaml.safe_load((run / "test_config.yaml").read_text())["model"]
    assert used["tta"]["flip"] is True and used["net"]["width"] == 0.25
    assert main(["test", *args[:-2]]) == 0  # not given: the checkpoint's value
    assert yaml.safe_load((run / "test_config.yaml").read_text())["model"]["tta"]["flip"] is False


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
        model = VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(flip="final"))
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
    assert real(
        VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(flip="final"))
    )  # no trainer: classify(), scripts


def test_checkpoints_from_before_the_rename_keep_their_data_module_state():
    from vgg_lightning.module import VGGClassifier

    model = VGGClassifier(net=dict(arch="vgg11", width=0.125))
    state = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "train_loader": {"epoch": 2, "batches_served": 7}}
    checkpoint = {"CIFARDataModule": state}  # what Lightning wrote under the data module's old class name
    model.on_load_checkpoint(checkpoint)
    assert checkpoint["ImageDataModule"] == state  # where Lightning now restores the data module from
