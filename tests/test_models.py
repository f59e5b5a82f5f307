import pytest
import torch

from raysplit.errors import ConfigError
from raysplit.models import build_model, cut_positions, layer_names, split_model


def test_fmnist_cnn_is_the_issue_architecture():
    m = build_model("fmnist_cnn", (1, 28, 28), 10)
    assert layer_names(m) == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    assert m.fc1.in_features == 3136 and m.fc1.out_features == 128
    assert sum(p.numel() for p in m.parameters()) == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)


@pytest.mark.parametrize("name,shape", [("fmnist_cnn", (1, 28, 28)), ("vgg11", (1, 28, 28)), ("vgg11", (3, 32, 32)),
                                        ("resnet18", (3, 32, 32)), ("mlp", (30,))])
def test_segments_compose_to_the_whole_model(name, shape):
    m = build_model(name, shape, 10, seed=0).eval()
    x = torch.randn(4, *shape)
    depth = len(layer_names(m))
    for cuts in ([1], [depth - 1], [1, depth // 2]):
        segs = split_model(m, cut_positions(m, cuts))
        y = x
        for s in segs:
            y = s(y)
        torch.testing.assert_close(y, m(x), rtol=0, atol=0)


def test_cut_by_name_and_position_agree():
    m = build_model("fmnist_cnn", (1, 28, 28), 10)
    assert cut_positions(m, ["pool2"]) == cut_positions(m, [6]) == [6]


@pytest.mark.parametrize("cuts,needle", [(["fc2"], "before its last layer"), ([10], "has 10 layers"), ([0], "1..9"),
                                         (["nope"], "conv1"), (["pool2", "pool1"], "increasing")])
def test_invalid_cuts_are_one_line_errors(cuts, needle):
    m = build_model("fmnist_cnn", (1, 28, 28), 10)
    with pytest.raises(ConfigError) as e:
        cut_positions(m, cuts)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("model.cut_layers")


def test_unknown_model():
    with pytest.raises(ConfigError, match="model.name: 'lenet'"):
        build_model("lenet", (1, 28, 28), 10)


def test_same_seed_same_init():
    a, b = build_model("resnet18", (3, 32, 32), 10, seed=3), build_model("resnet18", (3, 32, 32), 10, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
