"""invariant 1, docs/architecture.md: raw inputs never leave their holder; labels leave it only where the topology says."""
import numpy as np
import pytest
import torch

from raysplit.accounting import KINDS, role_of, row_fingerprints
from test_equivalence import CHAINS, chain_run


def raw_fingerprints(ds) -> set:
    return row_fingerprints(torch.from_numpy(np.concatenate([ds.train_x, ds.test_x])))


@pytest.mark.parametrize("topology", sorted(CHAINS))
def test_no_raw_inputs_in_ledger_and_labels_only_where_allowed(ray_session, topology):
    # one round, hand-offs through the server, every ledger entry kept: the run test_equivalence.py checks
    # the parameters of (one run per topology for the session)
    plan, result = chain_run(topology)
    cfg = plan.cfg
    entries = result.entries
    assert entries, "a run must record traffic"
    from raysplit.data import load_dataset
    raw = raw_fingerprints(load_dataset(cfg.data, cfg.seed))
    for e in entries:
        assert e.kind in KINDS
        assert not (e.fingerprints & raw), f"raw input rows in a {e.kind} message {e.src}->{e.dst}"
    labels = [e for e in entries if e.kind == "labels"]
    if topology == "u_shaped":
        assert labels == []
    else:
        assert labels and all(role_of(e.src) == "client" and e.dst == "server" for e in labels)
        # labels go to the server only: never to a relay or a hop
    assert all(e.kind != "labels" or e.dst == "server" for e in entries)


def test_fingerprint_check_detects_raw_rows():
    """The check above can fail: a payload holding raw rows is caught."""
    x = torch.randn(5, 1, 8, 8)
    assert row_fingerprints(x[2:4]) <= row_fingerprints(x)
    assert not (row_fingerprints(x * 1.0001) & row_fingerprints(x))
