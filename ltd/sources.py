"""What each data source is, in numbers: images per split and classes. Torch-free, for
the budget; ``ltd.data`` reads the images themselves."""

from __future__ import annotations

# train / test images as the source ships them, and classes. ImageNet-1k (an ImageFolder
# tree; the number of classes is read from its train/ folder by ltd.data).
SIZES = {
    "cifar10": {"train": 50_000, "test": 10_000, "classes": 10},
    "cifar100": {"train": 50_000, "test": 10_000, "classes": 100},
    "imagefolder": {"train": 1_281_167, "test": 50_000, "classes": 1000},
}
# scikit-learn's digits: one pool of 1,797 images; ltd.data carves a fixed test split of
# `test_size` (this default) out of it.
DIGITS_POOL, DIGITS_TEST_SIZE, DIGITS_CLASSES = 1_797, 397, 10
# DataLoader processes per training process for image files (a data set's `workers`
# overrides it); ltd.data decodes with them, the Slurm resources count them.
LOADER_WORKERS = 8
