"""Sweeps through the SDK against a real scheduler and agent: one run per trial with the values in its argv,
the best trial by the metrics the runs really logged, seeded random trials that repeat, and a keyed submit
that does not duplicate."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from gridlab.client import Client, NotFound, Sweep, SweepError
from gridlab.client.localcluster import LocalCluster

PY = sys.executable

# Prints its arguments, then logs loss 1000 at step 1 and lr * bs at step 2 (so "the last value" matters).
TRAIN = (
    "import json, os, sys\n"
    "args = sys.argv[1:]\n"
    "print(json.dumps(args))\n"
    "lr, bs = float(args[0].split('=')[1]), int(args[2])\n"
    "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
    "    f.write(json.dumps({'step': 1, 'loss': 1000.0}) + '\\n')\n"
    "    f.write(json.dumps({'step': 2, 'loss': lr * bs}) + '\\n')\n"
)


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


def test_a_grid_sweep_runs_every_combination_and_finds_the_best(client: Client) -> None:
    sweep = client.submit(
        [PY, "-c", TRAIN, "--lr={lr}"],
        sweep={"lr": "[0.1,0.01]", "bs": "[16,32,64]"},
        metric="loss",
        name="grid",
        cpus=0.1,
    )
    assert isinstance(sweep, Sweep)
    assert sweep.id.startswith("swp-")
    combos = [(lr, bs) for lr in ("0.1", "0.01") for bs in ("16", "32", "64")]  # the first parameter slowest
    trials = sweep.trials()
    assert [(t["index"], t["params"], t["name"]) for t in trials] == [
        (k, {"lr": lr, "bs": bs}, f"grid-{k}") for k, (lr, bs) in enumerate(combos)
    ]
    assert [t["run_id"] for t in trials] == [run.id for run in sweep.runs()]
    assert {t["state"] for t in trials} <= {"QUEUED", "STARTING", "RUNNING", "SUCCEEDED"}
    assert [s.state for s in sweep.wait(timeout=120)] == ["SUCCEEDED"] * 6

    records = sorted(client.runs(sweep=sweep.id, limit=None), key=lambda r: r.spec.sweep.index)
    assert [r.spec.sweep.index for r in records] == list(range(6))  # the scheduler filters by sweep
    for (lr, bs), record, run in zip(combos, records, sweep.runs(), strict=True):
        argv = [f"--lr={lr}", "--bs", bs]  # a placeholder filled, the other parameter appended
        assert list(record.spec.command) == [PY, "-c", TRAIN, *argv]
        assert (record.spec.sweep.size, record.spec.sweep.metric, record.spec.sweep.maximize) == (6, "loss", False)
        assert list(run.logs()) == [json.dumps(argv)]

    best = sweep.best()  # lowest last loss: lr 0.01 x bs 16 = 0.16, though step 1 logged 1000 everywhere
    assert best is not None
    assert (best[0].name, best[1]) == ("grid-3", pytest.approx(0.16))
    highest = sweep.best(maximize=True)
    assert highest is not None
    assert (highest[0].name, highest[1]) == ("grid-2", pytest.approx(6.4))
    assert sweep.best("accuracy") is None  # no run logged it
    assert client.sweep(sweep.id).best() == best  # from the runs' SweepTrial alone


def test_a_seeded_random_sweep_repeats_its_trials_and_a_keyed_submit_does_not_duplicate(client: Client) -> None:
    command = [PY, "-c", "import time; time.sleep(60)"]
    space = {"lr": "loguniform(1e-4,1e-1)", "opt": "['adam','sgd']", "layers": "randint(1,9)"}
    first = client.submit(command, sweep=space, strategy="random", trials=3, seed=7, cpus=0.1, idempotency_key="k1")
    again = client.submit(command, sweep=space, strategy="random", trials=3, seed=7, cpus=0.1, idempotency_key="k1")
    other = client.submit(command, sweep=space, strategy="random", trials=3, seed=7, cpus=0.1)
    try:
        assert again.id == first.id  # the same key: the same sweep, and no second set of runs
        assert [t["run_id"] for t in again.trials()] == [t["run_id"] for t in first.trials()]
        assert len(client.runs(sweep=first.id, limit=None)) == 3
        assert other.id != first.id
        params = [t["params"] for t in first.trials()]
        assert [t["params"] for t in other.trials()] == params
        assert len({p["lr"] for p in params}) == 3
        assert all(1e-4 <= float(p["lr"]) <= 1e-1 and p["opt"] in ("adam", "sgd") for p in params)
        assert all(run.name == f"sweep-{k}" for k, run in enumerate(first.runs()))
    finally:
        first.cancel()
        other.cancel()
    assert {s.state for s in first.wait(timeout=60) + other.wait(timeout=60)} == {"CANCELLED"}


def test_sweep_usage_errors_submit_nothing(client: Client) -> None:
    before = len(client.runs(limit=None))
    with pytest.raises(SweepError, match=r"unbounded distribution.*strategy='random'"):
        client.submit(["true"], sweep={"lr": "uniform(0,1)"})
    with pytest.raises(SweepError, match="needs trials"):
        client.submit(["true"], sweep={"lr": "uniform(0,1)"}, strategy="random")
    with pytest.raises(ValueError, match="only apply to a sweep"):
        client.submit(["true"], trials=3, metric="loss")
    with pytest.raises(TypeError, match="expression string"):
        client.submit(["true"], sweep={"lr": [0.1, 0.01]})  # type: ignore[dict-item]
    assert len(client.runs(limit=None)) == before
    with pytest.raises(NotFound, match="no sweep 'swp-nope'"):
        client.sweep("swp-nope").runs()
