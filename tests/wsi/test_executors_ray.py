import numpy as np
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


# ------------------------------------------------------------------ Ray actors asking for GPUs
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster on the CPU; it declares two logical GPUs (Ray's own resource
    accounting, no device needed) so that the GPU request and placement can be checked."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _where_am_i(_):
    import os

    import ray

    return os.getpid(), tuple(str(g) for g in ray.get_gpu_ids())


def test_ray_actors_asking_for_a_gpu_each_hold_their_own(ray_cluster):
    """Four workers asked, two GPUs in the cluster: two actors, each pinned to one GPU, each
    running its items in one process (so an encoder cached there is built once)."""
    results = run_items(
        _where_am_i,
        [(str(i), i) for i in range(6)],
        workers=4,
        executor="ray",
        ray_options={"num_gpus": 1},
        progress=False,
    )
    assert all(r.ok for r in results)
    gpus_by_process: dict[int, set] = {}
    for pid, gpus in (r.value for r in results):
        gpus_by_process.setdefault(pid, set()).add(gpus)
    assert len(gpus_by_process) == 2
    assert all(len(g) == 1 for g in gpus_by_process.values())
    assert {next(iter(g)) for g in gpus_by_process.values()} == {("0",), ("1",)}


def test_ray_pool_is_sized_to_the_cluster_and_refuses_gpus_it_lacks():
    from stromalens.executors import ray_pool_size

    assert ray_pool_size(8, 20, {"num_cpus": 1, "num_gpus": 1}, {"CPU": 16, "GPU": 4}) == 4
    assert ray_pool_size(8, 20, {"num_cpus": 1, "num_gpus": 0.5}, {"CPU": 16, "GPU": 2}) == 4
    assert ray_pool_size(8, 3, {"num_cpus": 1, "num_gpus": 0}, {"CPU": 16}) == 3
    with pytest.raises(ValueError, match="num_gpus=1 but the cluster has 0 GPU"):
        ray_pool_size(2, 5, {"num_cpus": 1, "num_gpus": 1}, {"CPU": 2})


def test_slide_actors_ask_for_gpus_only_on_cuda():
    """The resource request ``embed_cohort(executor='ray')`` makes (no GPU needed to check)."""
    from stromalens.wsi.devices import ray_actor_options

    assert ray_actor_options("cuda") == {"num_cpus": 1, "num_gpus": 1.0}
    assert ray_actor_options("cuda:1", 0.25) == {"num_cpus": 1, "num_gpus": 0.25}
    assert ray_actor_options("auto", cuda_available=True)["num_gpus"] == 1.0
    assert ray_actor_options("auto", cuda_available=False)["num_gpus"] == 0
    assert ray_actor_options("cpu", cuda_available=True)["num_gpus"] == 0
    assert ray_actor_options("mps")["num_gpus"] == 0
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="gpus_per_worker"):
            ray_actor_options("cuda", bad)


def test_embed_cohort_on_ray_asks_for_the_gpus_of_a_cuda_device(monkeypatch, tmp_path):
    """With ``device='cuda'`` the slide actors are declared with ``num_gpus`` and told to use
    the GPU Ray gives them (run_items intercepted: no GPU, no cluster needed)."""
    import stromalens.executors as executors
    from stromalens.wsi.embed import EmbedSettings, SlideJob, embed_cohort

    seen = {}

    def fake_run_items(fn, items, **kwargs):
        seen.update(kwargs, items=list(items))
        return []

    monkeypatch.setattr(executors, "run_items", fake_run_items)
    jobs = [SlideJob("a", tmp_path / "a.tiff")]
    embed_cohort(
        jobs,
        tmp_path,
        "synthclip",
        settings=EmbedSettings(device="cuda:3"),
        executor="ray",
        workers=2,
        progress=False,
        gpus_per_worker=0.5,
    )
    assert seen["ray_options"] == {"num_cpus": 1, "num_gpus": 0.5}
    assert seen["items"][0][1]["settings"].device == "cuda"
    embed_cohort(jobs, tmp_path, "synthclip", settings=EmbedSettings(device="cpu"),
                 executor="ray", workers=2, progress=False)  # fmt: skip
    assert seen["ray_options"]["num_gpus"] == 0
    assert seen["items"][0][1]["settings"].device == "cpu"


@pytest.fixture(scope="module")
def saved_synthclip(tmp_path_factory):
    """Random synthclip weights saved once, so every process loads the same encoder."""
    from safetensors.torch import save_file

    from stromalens.wsi.encoders import get_encoder

    path = tmp_path_factory.mktemp("weights") / "synthclip.safetensors"
    state = get_encoder("synthclip", weights="random").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_ray_actor_path_writes_the_process_pools_stores(
    ray_cluster, tmp_path, synthetic_slides, saved_synthclip
):
    from stromalens.wsi.embed import EmbedSettings, SlideJob, embed_cohort
    from stromalens.wsi.store import feature_dir, feature_path, read_slide

    jobs = [SlideJob(p.stem, p) for p in synthetic_slides[:2]]
    settings = EmbedSettings(export=False, device="cpu")
    runs = {}
    for executor in ("ray", "process"):
        results = embed_cohort(
            jobs,
            tmp_path / executor,
            "synthclip",
            weights=saved_synthclip,
            settings=settings,
            executor=executor,
            workers=2,
            progress=False,
        )
        assert [r["status"] for r in results] == ["done", "done"], results
        leaf = feature_dir(tmp_path / executor, "synthclip", settings.tiling)
        runs[executor] = [read_slide(feature_path(leaf, job.slide_id)) for job in jobs]
    for on_ray, in_pool in zip(runs["ray"], runs["process"], strict=True):
        assert np.array_equal(on_ray.coords, in_pool.coords) and len(on_ray.coords) > 0
        assert np.array_equal(on_ray.features, in_pool.features)
        assert on_ray.attrs["device"] == in_pool.attrs["device"] == "cpu"
        assert on_ray.attrs["precision"] == in_pool.attrs["precision"] == "fp32"
