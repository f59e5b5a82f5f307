"""Models as flat sequences of named layers, and the splitter that cuts them into segments.

Every model is an ``nn.Sequential`` whose children carry readable names (``conv1``, ``pool2``,
``layer3``, ``fc``...). A cut layer is the name of the last layer of the segment before the cut
(or its 1-based position), so ``cut_layers: [pool2]`` on FmnistCNN gives the client
conv1..pool2 and the server flatten..fc2.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from raysplit.errors import ConfigError
from raysplit.registry import Registry


def fmnist_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """The issue's Fashion-MNIST CNN (3136 = 64 * 7 * 7 for 28x28 inputs)."""
    flat = 64 * (image_size // 4) ** 2
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 32, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(flat, 128)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(128, num_classes)),
    ]))


def mlp(in_features: int, num_classes: int = 2, hidden: Sequence[int] = (64, 32)) -> nn.Sequential:
    """A small MLP for tabular data (breast-cancer Wisconsin) and fast tests."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def vgg(depth: str, in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True) -> nn.Sequential:
    """CIFAR-style VGG for small images: the torchvision feature stack, then one Linear(512, classes).

    Pools use ``ceil_mode`` so 28x28 inputs survive the five halvings (28-14-7-4-2-1) as 32x32 do.
    """
    layers: list[tuple[str, nn.Module]] = []
    width, conv_i, pool_i = in_channels, 0, 0
    for v in _VGG_CFG[depth]:
        if v == "M":
            pool_i += 1
            layers.append((f"pool{pool_i}", nn.MaxPool2d(2, ceil_mode=True)))
            continue
        conv_i += 1
        layers.append((f"conv{conv_i}", nn.Conv2d(width, v, 3, padding=1)))
        if batch_norm:
            layers.append((f"bn{conv_i}", nn.BatchNorm2d(v)))
        layers.append((f"relu{conv_i}", nn.ReLU()))
        width = v
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(512, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10, stem: str = "small") -> nn.Sequential:
    """torchvision ResNet flattened into stages.

    ``stem="small"`` adapts it to small images (3x3 stem, stride 1, no max-pool); ``stem="imagenet"`` keeps
    torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool (the paper tables test both).
    """
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    if stem == "imagenet":
        head = [("conv1", nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)),
                ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool)]
    else:
        head = [("conv1", nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)),
                ("bn1", net.bn1), ("relu", net.relu)]
    return nn.Sequential(OrderedDict([
        *head,
        ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3), ("layer4", net.layer4),
        ("avgpool", net.avgpool), ("flatten", nn.Flatten()), ("fc", net.fc),
    ]))


# name -> builder(input_shape, num_classes) -> nn.Sequential of named layers. A user's own model: register it
# with @MODELS.register("name") in their module, or name it as package.module:builder.
MODELS = Registry("model", "model.name")
_BUILTIN: dict[str, Callable[[tuple[int, ...], int], nn.Sequential]] = {
    "fmnist_cnn": lambda shape, k: fmnist_cnn(shape[0], k, shape[-1]),
    "mlp": lambda shape, k: mlp(int(torch.Size(shape).numel()), k),
    "vgg11": lambda shape, k: vgg("vgg11", shape[0], k),
    "vgg13": lambda shape, k: vgg("vgg13", shape[0], k),
    "vgg16": lambda shape, k: vgg("vgg16", shape[0], k),
    "vgg19": lambda shape, k: vgg("vgg19", shape[0], k),
    "resnet18": lambda shape, k: resnet(18, shape[0], k),
    "resnet50": lambda shape, k: resnet(50, shape[0], k),
    # variants for the paper tables: VGG without batch norm, ResNet with the ImageNet stem
    **{f"{d}_nobn": (lambda shape, k, d=d: vgg(d, shape[0], k, batch_norm=False)) for d in _VGG_CFG},
    "resnet18_imagenet": lambda shape, k: resnet(18, shape[0], k, stem="imagenet"),
    "resnet50_imagenet": lambda shape, k: resnet(50, shape[0], k, stem="imagenet"),
}
for _name, _builder in _BUILTIN.items():
    MODELS.register(_name, _builder)


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int | None = None) -> nn.Sequential:
    builder = MODELS.get(name, "model.name")
    if seed is not None:
        torch.manual_seed(seed)
    model = builder(tuple(input_shape), num_classes)
    if not isinstance(model, nn.Sequential):
        raise ConfigError("model.name", name, f"a builder returning an nn.Sequential of named layers (got {type(model).__name__})")
    return model


def layer_names(model: nn.Sequential) -> list[str]:
    return [name for name, _ in model.named_children()]


def cut_positions(model: nn.Sequential, cuts: Sequence[str | int], field: str = "model.cut_layers",
                  model_name: str = "model") -> list[int]:
    """Resolve cut layers (names or 1-based positions) to split positions, validating them.

    A position p means the segment before the cut holds layers [0, p). Cuts must be strictly increasing
    and leave every segment non-empty.
    """
    names = layer_names(model)
    depth = len(names)
    allowed = f"a layer name of {model_name} before its last layer ({', '.join(names[:-1])}) or a position 1..{depth - 1}"
    positions = []
    for cut in cuts:
        if isinstance(cut, bool):
            raise ConfigError(field, cut, allowed)
        # "3" names position 3; "²" or "٣" do not (str.isdigit and int() accept other scripts' digits)
        if isinstance(cut, int) or (isinstance(cut, str) and re.fullmatch(r"\s*-?[0-9]+\s*", cut, re.ASCII)):
            pos = int(cut)
            if not 1 <= pos <= depth - 1:
                raise ConfigError(field, cut, f"{allowed}; {model_name} has {depth} layers")
        elif isinstance(cut, str) and cut in names[:-1]:
            pos = names.index(cut) + 1
        else:
            raise ConfigError(field, cut, allowed)
        positions.append(pos)
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise ConfigError(field, list(cuts), "cut layers in increasing order of depth, each at a different layer")
    return positions


def split_model(model: nn.Sequential, positions: Sequence[int]) -> list[nn.Sequential]:
    """Cut ``model`` at ``positions`` into len(positions)+1 segments that share the original modules."""
    children = list(model.named_children())
    bounds = [0, *positions, len(children)]
    return [nn.Sequential(OrderedDict(children[a:b])) for a, b in zip(bounds, bounds[1:])]


# --------------------------------------------------------------------------- several inputs at a cut

class Combine(nn.Module):
    """Joins several parties' cut outputs into one tensor: concatenated along dim 1 (channels or
    features), summed, or averaged."""

    def __init__(self, how: str = "concat"):
        super().__init__()
        self.how = how

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.how == "concat":
            return torch.cat(xs, 1)
        total = torch.stack(xs).sum(0)
        return total / len(xs) if self.how == "mean" else total

    def extra_repr(self) -> str:
        return self.how


class Joined(nn.Module):
    """A segment fed by several parties: ``rest(combine(*inputs))``."""

    def __init__(self, combine: Combine, rest: nn.Sequential):
        super().__init__()
        self.combine, self.rest = combine, rest

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.rest(self.combine(*xs))


_WIDTH = {nn.Linear: "in_features", nn.Conv2d: "in_channels", nn.BatchNorm1d: "num_features", nn.BatchNorm2d: "num_features"}


def _rebuilt(layer: nn.Module, width: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(width, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(width, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         bias=layer.bias is not None, padding_mode=layer.padding_mode)
    return type(layer)(width, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                       track_running_stats=layer.track_running_stats)


@torch.no_grad()
def fit_input(segment: nn.Sequential, example: torch.Tensor, field: str, value, allowed: str) -> nn.Sequential:
    """Make ``segment`` take inputs shaped like ``example`` (part of the features, or joined cut outputs, of
    other widths or image sizes than the model was built for): each Linear, Conv2d or BatchNorm layer whose
    input width no longer matches is rebuilt (freshly initialized) with the width it now receives; the example
    is propagated layer by layer. A layer that cannot take it is a ConfigError(field, value, allowed)."""
    children = list(segment.named_children())
    x = example
    was_training = segment.training
    for i, (name, layer) in enumerate(children):
        kind = next((k for k in _WIDTH if type(layer) is k), None)
        if kind is not None:
            width = x.shape[-1] if kind is nn.Linear else x.shape[1]
            if getattr(layer, _WIDTH[kind]) != width:
                layer = _rebuilt(layer, width)
                children[i] = (name, layer)
        try:
            x = layer.eval()(x)
        except RuntimeError:
            raise ConfigError(field, value, f"{allowed} ({name} cannot take {list(x.shape[1:])})") from None
        finally:
            layer.train(was_training)
    return nn.Sequential(OrderedDict(children))
