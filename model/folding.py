"""Batch normalisation folded into the convolution before it, for inference.

In eval mode a BatchNorm2d is an affine map per channel, ``y = (x − mean) / sqrt(var + eps) · γ + β``, so a
convolution followed by it is one convolution with scaled weights and a bias. Folding drops a pass over every
activation map (on CPU the BatchNorm after each convolution took as long as a fifth of the U-Net's inference).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

M = TypeVar("M", bound=nn.Module)


def fold_batch_norms(model: M) -> M:
    """An inference copy of ``model`` in which every Conv2d followed directly by a BatchNorm2d within an
    ``nn.Sequential`` (the U-Net's DoubleConv) carries the normalisation, and the BatchNorm is an ``nn.Identity``.

    The copy computes what ``model.eval()`` computes, up to float rounding (a few units in the last place of fp32);
    ``model`` itself is left as it is, in its mode. The copy is for inference only: it is in eval mode, and its
    ``state_dict`` is not a checkpoint's.

    Args:
        model: a module whose BatchNorms have running statistics (any trained U-Net).

    Returns:
        The folded copy, in eval mode, on the model's device (set its memory format after folding: the folded
        weights are new tensors).

    Raises:
        ValueError: a BatchNorm to fold keeps no running statistics (``track_running_stats=False``), so that its
            eval-mode output depends on the batch.
    """
    folded = copy.deepcopy(model).eval()
    for sequence in folded.modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d:
                if norm.running_mean is None or norm.running_var is None:
                    raise ValueError(f"the BatchNorm2d after {type(conv).__name__} #{i} keeps no running statistics: "
                                     "there is nothing to fold")
                sequence[i], sequence[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return folded
