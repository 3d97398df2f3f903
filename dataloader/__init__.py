"""Loading raw data: image/mask pairs matched by name, and patch folders held in memory."""

# PatchDataset lives in dataloader.patches (it imports torch; the pairs do not, which keeps the CLIs quick to start)
from dataloader.pairs import ImagePair, find_pairs, load_pair

__all__ = ["ImagePair", "find_pairs", "load_pair"]
