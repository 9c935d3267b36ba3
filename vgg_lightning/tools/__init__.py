"""Measuring tools, not the product: each is a command a user can run on their own machine and data.

- ``python -m vgg_lightning.tools.bench``: Lightning against a plain PyTorch loop, images/s, data wait, memory
- ``python -m vgg_lightning.tools.tta_views RUN.ckpt ...``: which test-time view sets pay, on trained models
- ``python -m vgg_lightning.tools.gpu_report --data_dir DIR``: the GPU measurements the recipes need, as one run
"""
