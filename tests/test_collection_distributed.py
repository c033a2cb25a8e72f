"""The collection graph on a real Dask ``distributed`` scheduler with two worker processes on loopback."""

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from conftest import make_peft_adapter

    root = tmp_path_factory.mktemp("dist")
    for name, r, seed in (("a", 2, 0), ("b", 4, 1), ("c", 4, 2), ("d", 1, 3), ("e", 3, 4)):
        make_peft_adapter(root / name, r=r, seed=seed)
    return [str(root / x) for x in "abcde"]


def test_two_workers_give_the_local_result(cluster, adapters):
    from distributed import Client, get_task_stream

    from analysis.sweeps.collection import collection_similarity

    local = collection_similarity(adapters, k=2, tile=2)
    with Client(cluster) as client:
        with get_task_stream(client) as ts:
            remote = collection_similarity(adapters, k=2, tile=2, client=client)
        # the tasks ran in the two worker processes (both of them), not in this one
        assert len({t["worker"] for t in ts.data}) == 2
    by_address = collection_similarity(adapters, k=2, tile=2, client=cluster.scheduler_address)
    for res in (remote, by_address):
        np.testing.assert_allclose(res.similarity, local.similarity, atol=1e-13)
        np.testing.assert_allclose(res.cosine, local.cosine, atol=1e-13)
        np.testing.assert_allclose(res.module_cosine, local.module_cosine, atol=1e-13, equal_nan=True)


def test_worker_errors_reach_the_caller_as_adapter_errors(cluster, adapters, tmp_path):
    from analysis.errors import AdapterError
    from analysis.sweeps.collection import collection_similarity

    with pytest.raises(AdapterError, match="no such file"):
        collection_similarity([adapters[0], str(tmp_path / "missing")], client=cluster.scheduler_address)


def test_cli_scheduler_option(cluster, adapters, tmp_path, capsys):
    from analysis.cli.collection import main

    out = tmp_path / "c.json"
    assert main([*adapters[:3], "--scheduler", cluster.scheduler_address, "--json", str(out)]) == 0
    local = tmp_path / "l.json"
    assert main([*adapters[:3], "--json", str(local)]) == 0
    assert out.read_bytes() == local.read_bytes()  # the scheduler is no setting: same bytes
