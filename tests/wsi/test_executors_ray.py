import pytest

from stromalens.executors import run_items


def _square(x):
    if x == 3:
        raise RuntimeError("three is bad")
    return x * x


def test_ray_executor_in_local_mode_isolates_failures(monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'stromalens[ray]')")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    results = run_items(
        _square, [(str(i), i) for i in range(5)], workers=2, executor="ray", progress=False
    )
    assert [r.key for r in results] == ["0", "1", "2", "3", "4"]
    assert [r.value for r in results if r.ok] == [0, 1, 4, 16]
    assert "three is bad" in results[3].error


def test_unknown_executor_is_named():
    with pytest.raises(ValueError, match="dask"):
        run_items(_square, [("a", 1)], executor="dask", progress=False)


def test_process_pool_api_unchanged():
    results = run_items(_square, [("a", 2), ("b", 3)], workers=2, progress=False)
    assert results[0].value == 4 and not results[1].ok
