"""Direct links between party hosts (raysplit/link.py): calls in order with their replies, errors raised where
the call was made, a peer that cannot connect left on Ray calls, a dead peer a LinkBroken; and the step
transport changes nothing a run computes or records (the Ray path stays the reference)."""
import os

import numpy as np
import pytest
import ray
import torch

from conftest import shared_run, small_config
from raysplit import link
from raysplit.algorithms.splitnn import SplitNN
from raysplit.experiment import run
from test_equivalence import chain_sets
from test_splitfed import adam_sets
from test_topologies import VERTICAL, VERTICAL_CASES


@ray.remote(num_cpus=0)
class Peer:
    """Stands in for a PartyHost: ``serve`` runs ``call`` for the link's messages."""

    def __init__(self):
        self.calls = []

    def call(self, key, method, *args):
        self.calls.append(method)
        if method == "fail":
            raise ValueError(f"bad {args[0]}")
        if method == "die":
            os._exit(1)
        if method == "pair":
            return args[0] * 2, {"n": len(args[0])}
        return args

    def serve(self, name, address, token):
        return link.serve(self, name, address, token)

    def seen(self):
        return self.calls


@ray.remote(num_cpus=0)
class Unreachable:
    def serve(self, name, address, token):
        return link.serve(self, name, ("127.0.0.1", 1), token)     # nothing listens on port 1


def test_calls_run_in_order_with_their_replies_and_arrays_cross_intact(ray_session):
    peer = Peer.remote()
    links = link.open_links({"server": peer, "elsewhere": Unreachable.remote()})
    assert list(links) == ["server"], "a peer that cannot connect stays on Ray calls"
    x = np.random.default_rng(0).random((64, 32, 14, 14), dtype=np.float32)
    doubled, info = links["server"].submit("k", "pair", 2, x)        # two returns of one call
    echo = links["server"].submit("k", "echo", 1, doubled, "text")    # a pending reply sent on as an argument
    a, b = link.resolve(info), link.resolve(echo)
    assert a == {"n": 64}
    np.testing.assert_array_equal(b[0], x * 2)
    assert b[0].flags.writeable and b[1] == "text"    # received arrays are writeable: torch.from_numpy, no copy
    with pytest.raises(ValueError, match="bad 3") as err:
        link.resolve(links["server"].submit("k", "fail", 1, 3))
    assert "raised on server" in "".join(err.value.__notes__)
    assert link.resolve(links["server"].submit("k", "echo", 1, 1)) == (1,), "the link works after an error"
    link.close_links(links)
    assert ray.get(peer.seen.remote()) == ["pair", "echo", "fail", "echo"]


def test_a_peer_that_dies_mid_call_is_a_broken_link(ray_session):
    links = link.open_links({"server": Peer.remote()})
    with pytest.raises(link.LinkBroken, match="link to server broken"):
        link.resolve(links["server"].submit("k", "die", 1))
    link.close_links(links, quiet=True)


# each config's run over links (the default transport) is a run other tests read, once for the session
# (conftest.shared_run); here it meets the same config run over Ray calls
TRANSPORT_CASES = {
    # two peers computing at once: test_topologies.py's image-concat run (two holders of image halves)
    "vertical": ((*VERTICAL, *VERTICAL_CASES["image-concat"]), True),
    # a hop's output sent on to the server: test_equivalence.py's (and test_privacy.py's) multi_hop run
    "multi_hop": (chain_sets("multi_hop"), True),
    # the server serving two workers' links at once (u_shaped, five clients of unequal sizes, Adam):
    # test_splitfed.py's runs for its by-hand oracle
    "splitfed_v1": (adam_sets("v1"), False),
    "splitfed_v2": (adam_sets("v2"), False),
}


@pytest.mark.parametrize("case", list(TRANSPORT_CASES))
def test_link_and_ray_transports_compute_and_record_the_same(ray_session, case):
    """Vertical: two peers computing at once; multi-hop: a hop's output sent on to the server; SplitFed: the
    server serves two workers' links at once (v1: a streaming call per worker, each client's copies averaged
    as it finishes; v2: the turnstile orders the steps of both)."""
    sets, capture = TRANSPORT_CASES[case]
    plan, by_link = shared_run(*sets, capture_ledger=capture)
    assert plan.cfg.runtime.step_transport == "link" and plan.cfg.training.rounds == 1
    by_ray = run(small_config(*sets, "runtime.step_transport=ray"), progress=False, write=False)
    drop = [c for c in by_ray.metrics.columns if c.startswith("wall_s")]
    assert by_link.metrics.drop(columns=drop).equals(by_ray.metrics.drop(columns=drop))
    assert by_link.ledger.equals(by_ray.ledger)
    a, b = by_ray.model.state_dict(), by_link.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("handoff", ["peer", "server"])
def test_rounds_over_links_hand_on_from_host_to_host_as_the_driver_would(ray_session, monkeypatch, handoff):
    """Three worker hosts, seven clients in a shuffled order, two rounds: over links, a call per host per round
    and the hand-offs straight from host to host (link.Mesh), or relayed by the server over the hosts' links;
    bitwise what a call per run gives (ray)."""
    sets = ("topology=u_shaped", "model.cut_layers=[pool1, relu3]", "data.num_clients=7", "runtime.workers=3", "training.client_order=shuffled",
            "training.optimizer=adam", "training.lr=0.01", f"handoff={handoff}")
    rounds = []
    over_links = SplitNN._round_over_links
    monkeypatch.setattr(SplitNN, "_round_over_links", lambda self, *a: rounds.append(a) or over_links(self, *a))
    by_ray = run(small_config(*sets, "runtime.step_transport=ray"), progress=False, write=False)
    assert not rounds
    by_link = run(small_config(*sets, "runtime.step_transport=link"), progress=False, write=False)
    assert len(rounds) == 2
    drop = [c for c in by_ray.metrics.columns if c.startswith("wall_s")]
    assert by_link.metrics.drop(columns=drop).equals(by_ray.metrics.drop(columns=drop))
    assert by_link.ledger.equals(by_ray.ledger)
    a, b = by_ray.model.state_dict(), by_link.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
