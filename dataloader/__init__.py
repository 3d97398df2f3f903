"""Loading raw data: image/mask pairs matched by name, and patch folders held in memory."""

from dataloader.pairs import ImagePair, find_pairs, load_pair
from dataloader.patches import PatchDataset

__all__ = ["ImagePair", "PatchDataset", "find_pairs", "load_pair"]
