"""nestzoo.published holds the same figures as docs/reference.md's "Published accuracies"."""
import re
from pathlib import Path

from nestzoo import published, registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
ROW = re.compile(r"^\| (WRN-16-8|WRN-40-4|ResNet-110|ResNet-20) \|(.*)\|$")


def doc_tables():
    """{(data set, arch, variant): accuracy} parsed from the doc's two tables, in order."""
    section = DOC.read_text().split("## Published accuracies", 1)[1].split("\n## ", 1)[0]
    found, data = {}, None
    for line in section.splitlines():
        if line.startswith("CIFAR-10:"):
            data = "cifar10"
        elif line.startswith("CIFAR-100:"):
            data = "cifar100"
        match = ROW.match(line)
        if match:
            arch = match.group(1).lower().replace("wrn-", "wrn").replace("resnet-", "resnet")
            cells = [cell.split("(")[0].strip() for cell in match.group(2).split("|")]
            for variant, cell in zip(published.VARIANTS, cells):
                found[(data, arch, variant)] = float(cell)
    return found


def test_published_equals_the_doc():
    assert doc_tables() == published.ACCURACY
    assert len(published.ACCURACY) == 2 * 4 * 4


def test_published_names_are_registry_names():
    for data, arch, variant in published.ACCURACY:
        registry.parse_name(f"{arch}.{variant}")
    assert published.published_accuracy("cifar10", "wrn16-8", "a-resnest") == 95.29
    assert published.published_accuracy("digits", "resnet20", "standard") is None
    assert published.published_accuracy("cifar100", "resnet20", "densenest") is None
