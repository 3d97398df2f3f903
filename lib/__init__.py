"""The pipeline stages (generate, prepare, training, segmenter, evaluation) above dataloader/ and model/, and
below them the building blocks in lib/core/ (see lib/core/__init__.py for the layers)."""
