"""A cut right before an in-place layer (issue 26): the received activation is a leaf whose gradient goes back
upstream, so the receiving segment must not let its first layer (``ReLU(inplace=True)``, as after ResNet's
``bn1``) modify it in place. Split training still equals the unsplit network (the oracle of
test_equivalence.py)."""
import copy

import pytest

from conftest import max_param_diff, small_config, train_with
from raysplit.algorithms import SplitNN
from raysplit.experiment import prepare
from raysplit.topology import ComposedNet
from test_equivalence import TOL, centralized_replay


def inplace_net(input_shape, num_classes):
    """ResNet's stem in small (conv, bn, in-place ReLU), twice, then a classifier: every ReLU is in place."""
    from collections import OrderedDict

    from torch import nn
    c = input_shape[0]
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, 4, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(4)), ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(4, 8, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(8)), ("relu2", nn.ReLU(inplace=True)),
        ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(8 * (input_shape[-1] // 4) ** 2, 16)), ("relu3", nn.ReLU(inplace=True)),
        ("fc2", nn.Linear(16, num_classes)),
    ]))


# vanilla (ResNet's cut at bn1): the server's segment starts with relu1, over Ray calls; u_shaped: the server's
# with relu1 and the client's head with relu2, over links (the default step transport)
@pytest.mark.parametrize("sets", [
    ("topology=vanilla", "model.cut_layers=[bn1]", "runtime.step_transport=ray"),
    ("topology=u_shaped", "model.cut_layers=[bn1,bn2]", "runtime.step_transport=link"),
], ids=["vanilla-ray", "u_shaped-link"])
def test_cut_before_an_inplace_layer_equals_unsplit_network(ray_session, sets):
    plan = prepare(small_config("model.name=test_inplace_cut:inplace_net", "training.rounds=1", "handoff=server", *sets))
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    split = train_with(SplitNN, plan)
    reference = centralized_replay(plan)
    assert max_param_diff(reference, initial) > 1e-3, "training must move the parameters"
    assert max_param_diff(split, reference) <= TOL
