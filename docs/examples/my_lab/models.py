"""A model: a builder (input shape, number of classes) -> nn.Sequential of named layers (the cut names)."""
from collections import OrderedDict

from torch import nn

from raysplit.models import MODELS


@MODELS.register("tiny_net")
def tiny_net(input_shape, num_classes):
    channels, height, width = input_shape
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(channels, 8, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * (height // 2) * (width // 2), num_classes)),
    ]))
