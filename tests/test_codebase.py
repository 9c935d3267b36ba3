"""Conventions the code keeps, checked: every overridden Lightning hook is marked @override and names a real hook."""

import importlib
import inspect
import pkgutil

import lightning as L
from lightning.pytorch.cli import LightningCLI

import vgg_lightning

BASES = (L.Callback, L.LightningModule, L.LightningDataModule, LightningCLI)


def project_classes():
    for info in pkgutil.walk_packages(vgg_lightning.__path__, "vgg_lightning."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BASES):
                yield cls


def test_hooks_are_marked_and_exist():
    classes = list(project_classes())
    assert len(classes) >= 15  # the callbacks, the module, the data module, the CLI
    for cls in classes:
        for name, attr in vars(cls).items():
            fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if not inspect.isfunction(fn) or name.startswith("_"):
                continue
            in_a_base = any(name in vars(base) for base in cls.__mro__[1:])
            if name.startswith("on_"):  # a hook's name: a misspelt one would silently never be called
                assert in_a_base, f"{cls.__name__}.{name} is not a hook of {cls.__mro__[1].__name__} (misspelt?)"
            if in_a_base:
                assert getattr(fn, "__override__", False), f"{cls.__name__}.{name} overrides a hook: mark it @override"
