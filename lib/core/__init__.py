"""The bottom layer: plumbing (errors, atomic writes, jobs, parameters, devices, processes) and the science that
needs nothing above it (image I/O, normalisation, padding, patch sampling, sliding-window inference, metrics, losses,
schedule, the synthetic benchmark, figures).

The layers, each importing only those below it (``tests/test_layers.py`` checks it):

1. ``lib/core/``: this package.
2. ``dataloader/`` (image pairs, patch folders) and ``model/`` (the U-Net, checkpoints).
3. ``lib/``: the pipeline stages: ``generate``, ``prepare``, ``training``, ``segmenter``, ``evaluation``.
4. The entry points: ``train.py``, ``predict.py``, the notebooks, ``figures/``, ``benchmarks/``.
"""
