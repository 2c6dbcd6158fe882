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
from gridlab.v1 import types_pb2

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


def test_two_users_with_one_key_get_two_sweeps_and_an_admin_never_mixes_them(
    cluster: LocalCluster, client: Client
) -> None:
    tokens = {user: client.create_token(user) for user in ("swalice", "swbob")}
    command = [PY, "-c", "import time; time.sleep(60)", "{lr}"]
    with Client(cluster.address, tokens["swalice"]) as alice, Client(cluster.address, tokens["swbob"]) as bob:
        mine = alice.submit(command, sweep={"lr": "[1,2,3]"}, idempotency_key="same", cpus=0.1, priority=-5)
        theirs = bob.submit(command, sweep={"lr": "[7,8]"}, idempotency_key="same", cpus=0.1, priority=-5)
        try:
            assert mine.id != theirs.id  # the scheduler scopes keys per user: so does the sweep id
            assert alice.submit(command, sweep={"lr": "[1,2,3]"}, idempotency_key="same", cpus=0.1).id == mine.id
            assert [t["params"]["lr"] for t in client.sweep(mine.id).trials()] == ["1", "2", "3"]
            assert [t["params"]["lr"] for t in client.sweep(theirs.id).trials()] == ["7", "8"]
            # Even a forged collision (bob's run carrying alice's sweep id) stays out of alice's sweep.
            spec = bob.runs(sweep=theirs.id, limit=None)[0].spec
            spec.sweep.name = mine.id
            spec.sweep.index = 0
            stray = bob._submit_spec(spec, "")
            assert client.sweep(mine.id).owner == "swalice"
            assert {t["run_id"] for t in client.sweep(mine.id).trials()} == {r.id for r in mine.runs()}
            assert len(client.sweep(mine.id).cancel()) == 3
            assert bob.get_run(stray.id).state != types_pb2.RUN_STATE_CANCELLED
            bob.cancel(stray.id)
            bob.wait(stray.id, timeout=60)
        finally:
            mine.cancel()
            theirs.cancel()
            mine.wait(timeout=60)
            theirs.wait(timeout=60)


def test_best_takes_the_last_value_and_skips_diverged_failed_and_cancelled_runs(client: Client) -> None:
    # Each trial logs the losses in its argument ("none": nothing); "fail" makes it exit 1 after logging.
    code = (
        "import json, os, sys\n"
        "values, fail = sys.argv[1].split(':'), sys.argv[2] == 'fail'\n"
        "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
        "    for i, x in enumerate(values):\n"
        "        if x != 'none':\n"
        "            f.write(json.dumps({'step': i, 'loss': float(x)}) + '\\n')\n"
        "sys.exit(1 if fail else 0)\n"
    )
    sweep = client.submit(
        [PY, "-c", code, "{v}", "{f}"],
        sweep={"v": "['0.5:0.3', '0.9:0.01:nan', '0.9:0.02:inf', 'none', '0.4']", "f": "['ok', 'fail']"},
        metric="loss",
        cpus=0.1,
    )
    sweep.wait(timeout=120)
    by_params = {(t["params"]["v"], t["params"]["f"]): t for t in sweep.trials()}
    best = sweep.best()
    assert best is not None
    # 0.01 and 0.02 were logged before the runs diverged; the failed 0.3 and 0.4 do not count.
    assert (best[0].id, best[1]) == (by_params[("0.5:0.3", "ok")]["run_id"], pytest.approx(0.3))
    highest = sweep.best(maximize=True)
    assert highest is not None
    assert (highest[0].id, highest[1]) == (by_params[("0.4", "ok")]["run_id"], pytest.approx(0.4))


def test_a_trial_over_the_schedulers_limits_is_refused_before_any_is_submitted(client: Client) -> None:
    before = len(client.runs(limit=None))
    with pytest.raises(ValueError, match=r"trial 1 of 2: v='xxx.*1200 characters.*at most 1000"):
        client.submit(["true", "{v}"], sweep={"v": "['a', '" + "x" * 1200 + "']"}, cpus=0.1)
    with pytest.raises(ValueError, match=r"trial 10 of 11: its idempotency key .*201 characters.*at most 200"):
        client.submit(["true", "{v}"], sweep={"v": "range(11)"}, idempotency_key="k" * 192, cpus=0.1)
    assert len(client.runs(limit=None)) == before
