"""A scikit-learn fit uses as many native threads as CPUs its Ray task holds (``train.resources``)."""
from __future__ import annotations


def _threads_seen() -> dict[str, int]:
    import sklearn.ensemble  # noqa: F401  (loads OpenMP)
    from threadpoolctl import threadpool_info

    from raypipe.train.sklearn_trainer import _threads

    with _threads():
        return {i["user_api"]: i["num_threads"] for i in threadpool_info()}


def test_fit_threads_follow_the_task_cpus(ray_session):
    import ray

    # The same pooled worker may serve both: Ray's OMP_NUM_THREADS is set from its first task only.
    one = ray.get(ray.remote(_threads_seen).options(num_cpus=1).remote())
    two = ray.get(ray.remote(_threads_seen).options(num_cpus=2).remote())
    assert one["openmp"] == 1 and two["openmp"] == 2


def test_a_fit_in_the_driver_uses_the_cores_unless_the_spec_sets_its_cpus(ray_session, tmp_path):
    import os

    import raypipe
    from raypipe.train.sklearn_trainer import driver_threads
    from tests.conftest import small_spec

    cores = min(os.cpu_count(), int(ray_session.cluster_resources()["CPU"]))
    assert driver_threads(raypipe.load_spec(small_spec(tmp_path))) == cores
    assert driver_threads(raypipe.load_spec(small_spec(tmp_path, train={"resources": {"CPU": 1}}))) == 1
