"""The paper's published CIFAR test accuracies (appendix B.4, Tables 1-2), as data.

Each figure is the mean over seeds 0..6 of the final model's test accuracy, in
percent, with the reference implementation and the recipe of `nestzoo.recipe`
(docs/reference.md, "Published accuracies", gives the same tables with parameter
counts; tests/test_published.py keeps the two equal).
"""

#: The arch and variant order of the paper's tables.
ARCHS = ("wrn16-8", "wrn40-4", "resnet110", "resnet20")
VARIANTS = ("standard", "resnest", "bn-resnest", "a-resnest")

_ROWS = {
    "cifar10": {
        "wrn16-8": (95.56, 94.39, 95.48, 95.29),
        "wrn40-4": (95.45, 94.58, 95.61, 95.48),
        "resnet110": (94.46, 92.77, 94.52, 93.97),
        "resnet20": (92.60, 91.02, 92.56, 92.47),
    },
    "cifar100": {
        "wrn16-8": (79.14, 75.43, 78.99, 78.74),
        "wrn40-4": (79.08, 75.16, 78.97, 78.62),
        "resnet110": (74.08, 69.08, 73.95, 72.53),
        "resnet20": (68.56, 64.73, 68.47, 68.16),
    },
}

#: {(data set, arch, variant): published test accuracy in percent}
ACCURACY = {(data, arch, variant): value
            for data, rows in _ROWS.items() for arch, values in rows.items()
            for variant, value in zip(VARIANTS, values)}

#: The data sets of Table 1 (CIFAR-10) and Table 2 (CIFAR-100).
TABLES = {1: "cifar10", 2: "cifar100"}


def published_accuracy(dataset, arch, variant):
    """The paper's mean test accuracy (%) of `variant` of `arch` on `dataset`, or None
    where the paper has no such cell (another data set, arch or variant)."""
    return ACCURACY.get((dataset, arch, variant))
