"""The published numbers (Vepakomma et al. 2018, Tables 1 and 2), as printed, and what they mean.

Values are kept as the printed strings so their precision is known: "0.03" stands for [0.025, 0.035).
"""
from __future__ import annotations

from decimal import Decimal

METHODS = ("large_batch_sgd", "fedavg", "splitnn")
METHOD_NAMES = {"large_batch_sgd": "large-batch synchronous SGD", "fedavg": "federated averaging",
                "splitnn": "SplitNN"}
CLIENTS = (100, 500)
TRAIN_IMAGES = 50_000          # CIFAR-10 and CIFAR-100 training sets, split evenly over the clients

# Table 1: client-side TFLOPs per client, CIFAR-10 over VGG.
TABLE1_TFLOPS = {
    "large_batch_sgd": {100: "29.4", 500: "5.89"},
    "fedavg": {100: "29.4", 500: "5.89"},
    "splitnn": {100: "0.1548", 500: "0.03"},
}

# Table 2: bandwidth per client (GB), CIFAR-100 over ResNet(-50).
TABLE2_GB = {
    "large_batch_sgd": {100: "13", 500: "14"},
    "fedavg": {100: "3", 500: "2.4"},
    "splitnn": {100: "6", 500: "1.2"},
}


def value(printed: str) -> float:
    return float(printed)


def bounds(printed: str) -> tuple[float, float]:
    """The interval a printed number was rounded from: "1.2" -> (1.15, 1.25)."""
    d = Decimal(printed)
    half = Decimal(1).scaleb(d.as_tuple().exponent) / 2
    return float(d - half), float(d + half)


def rounds_to(x: float, printed: str) -> bool:
    low, high = bounds(printed)
    return low <= x < high
