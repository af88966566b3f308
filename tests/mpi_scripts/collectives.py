"""The MPI communicator's collectives, checked on every rank against what they must give.

Run by tests/test_distributed.py as ``mpiexec -n R python collectives.py OUT``. Each rank checks and,
when every check passed, writes ``OUT/ok-<rank>``; a failed check raises, which the communicator's
exception hook turns into an ``MPI_Abort`` of the whole job (so the test sees a non-zero exit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: str) -> None:
    from fastconv.distributed import DistributedOptimizer, create_communicator, sync_batchnorm_stats
    from fastconv.train.optimizers import Adam, Momentum

    comm = create_communicator("mpi")
    r, size = comm.rank, comm.size
    assert size > 1, size
    assert sys.excepthook is not sys.__excepthook__, "size > 1 must install the abort hook"
    assert 0 <= comm.local_rank < comm.local_size == size  # one node here

    def rank_rng(k: int) -> np.random.Generator:
        return np.random.default_rng([7, k])

    # -- weighted gradient average, two dtypes (two fused buffers), ranks with weight 0 ----------------
    params = {
        "a": np.zeros((3, 4)),
        "b": np.zeros(5, dtype=np.float32),
        "c": np.zeros((2, 2, 2)),
    }
    weights = [k % 3 for k in range(size)]  # rank 0 has weight 0: an empty slice
    grads_of = [
        {k: rank_rng(q).standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
        for q in range(size)
    ]
    mine = grads_of[r] if weights[r] else None
    before = {k: v.copy() for k, v in grads_of[r].items()}
    got = comm.average_gradients(params, mine, weights[r])
    total = sum(weights)
    for k, p in params.items():
        want = sum(np.float64(weights[q]) * grads_of[q][k].astype(np.float64) for q in range(size)) / total
        tol = 1e-6 if p.dtype == np.float32 else 1e-13
        assert got[k].shape == p.shape and got[k].dtype == p.dtype, (k, got[k].shape, got[k].dtype)
        np.testing.assert_allclose(got[k], want, rtol=tol, atol=tol)
        np.testing.assert_array_equal(grads_of[r][k], before[k])  # the inputs are left alone
    # every rank holds the same bytes
    blobs = comm.allgather_object({k: v.tobytes() for k, v in got.items()})
    assert all(b == blobs[0] for b in blobs)
    assert comm.stats["steps"] == 1 and comm.stats["bytes"] > 0 and comm.stats["reduce_seconds"] >= 0
    # the buffers are reused: a second call allocates nothing new
    first = [g.buffer for g in comm._layout(params)]
    comm.average_gradients(params, grads_of[r], 1.0)
    assert [g.buffer for g in comm._layout(params)] == first
    # every weight 0: a clear error on every rank
    try:
        comm.average_gradients(params, None, 0.0)
    except RuntimeError as exc:
        assert "every weight was 0" in str(exc)
    else:
        raise AssertionError("no error for a batch without samples")

    # -- metric sums, broadcasts, gathers --------------------------------------------------------------
    np.testing.assert_array_equal(comm.allreduce_sum([r, 1.0, 0.5]), [sum(range(size)), size, 0.5 * size])
    assert comm.bcast_object({"from": r})["from"] == 0
    assert comm.allgather_object(r) == list(range(size))
    rows = comm.gather_rows(np.full(r, r))  # rank r gives r rows
    np.testing.assert_array_equal(rows, np.concatenate([np.full(q, q) for q in range(size)]))

    mine_params = {k: rank_rng(100 + r).standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    root_params = {k: rank_rng(100).standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    held = {k: v for k, v in mine_params.items()}
    comm.bcast_params(mine_params)
    for k in params:
        assert mine_params[k] is held[k]  # in place
        np.testing.assert_array_equal(mine_params[k], root_params[k])
    # a rank whose model differs is told so
    odd = dict(mine_params)
    if r == size - 1:
        odd["c"] = np.zeros((2, 2, 3))
    try:
        comm.bcast_params(odd)
    except ValueError as exc:  # on every rank, so none waits for the others
        assert f"rank(s) [{size - 1}] differ from rank 0" in str(exc), exc
        assert ("(2, 2, 3)" in str(exc)) == (r == size - 1), exc
    else:
        raise AssertionError("a different model was not noticed")

    # optimizer state: rank 0's steps and moments everywhere; then a wrapped step keeps replicas identical
    opt = Adam(0.01)
    for _ in range(r + 1):  # different state on every rank
        opt.update(mine_params, {k: np.ones_like(v) * (r + 1) for k, v in mine_params.items()})
    comm.bcast_params(mine_params)
    comm.bcast_optimizer(opt, mine_params)
    assert opt.iter == 1
    dist = DistributedOptimizer(opt, comm)
    assert dist.lr == 0.01 and dist.name == "adam" and dist.state_dict()["iter"] == 1
    dist.update(mine_params, grads_of[r], weight=r + 1)
    assert opt.iter == 2
    blobs = comm.allgather_object({k: v.tobytes() for k, v in mine_params.items()})
    assert all(b == blobs[0] for b in blobs)
    scaled = DistributedOptimizer(Momentum(0.1), comm, scale_lr=True)
    assert abs(scaled.lr - 0.1 * size) < 1e-15
    scaled.lr = 0.5
    assert scaled.optimizer.lr == 0.5

    # in-place means of arrays (BatchNorm statistics), and the BatchNorm sync with a rank lacking them
    arrays = [np.full(3, float(r)), np.full((2, 2), 2.0 * r, dtype=np.float32)]
    comm.average_arrays(arrays)
    np.testing.assert_allclose(arrays[0], np.full(3, (size - 1) / 2))
    np.testing.assert_allclose(arrays[1], np.full((2, 2), size - 1.0))

    class BN:
        def __init__(self, m: np.ndarray | None) -> None:
            self.running_mean = m
            self.running_var = None if m is None else m * 2

    class Model:
        def __init__(self) -> None:
            self.layers = {"bn": BN(None if r == 0 else np.full(4, float(r)))}

    model = Model()
    assert sync_batchnorm_stats(comm, model) == 1
    have = list(range(1, size))
    np.testing.assert_allclose(model.layers["bn"].running_mean, np.full(4, np.mean(have)))
    np.testing.assert_allclose(model.layers["bn"].running_var, np.full(4, 2 * np.mean(have)))

    comm.idle_barrier()
    Path(out, f"ok-{r}").write_text("ok")


if __name__ == "__main__":
    main(sys.argv[1])
