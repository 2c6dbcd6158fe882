"""`make demo`: a whole gridlab cluster on this machine, one training run through it.

Starts a scheduler and one agent (with two simulated GPUs) as background daemons with
their state in a temporary folder, submits examples/train_mlp.py, follows its logs to the
end, prints the final state, and stops both daemons. The scheduler also serves its web
dashboard on a free loopback port (printed with the admin token to log in with); with
`--keep` (`make demo DEMO_ARGS=--keep`) the cluster stays up until Ctrl-C to look around.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from gridlab.client.localcluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> int:
    t0 = time.monotonic()
    keep = "--keep" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="gridlab-demo-") as tmp, LocalCluster(Path(tmp), web=True) as cluster:
        address = cluster.start_scheduler()
        print(f"scheduler listening on {address} (state in {tmp}/scheduler)")
        print(f"dashboard: {cluster.web_url}/ (log in with the admin token in {tmp}/scheduler/admin.token)")
        cluster.start_agent("demo-agent", fake_gpus="2xA100-80GB:80")
        print("agent demo-agent connected with 2 simulated A100s")
        client = cluster.client()
        run = client.submit([sys.executable, str(HERE / "train_mlp.py"), "--steps", "1000"], gpus=1, name="train-mlp")
        print(f"submitted {run.id}; following its logs:\n")
        for line in run.logs(follow=True):
            print(f"  | {line}")
        status = run.wait(timeout=120, raise_on_failure=False)
        print(f"\nrun {run.id}: {status.state} (exit code {status.exit_code})")
        for agent in client.agents():
            print(f"agent {agent.name}: {len(agent.inventory.gpus)} GPUs, {agent.gpus_free} free")
        print(f"dashboard: {cluster.web_url}/runs/{run.id}")
        if keep:
            print(f"admin token: {cluster.admin_token}\nthe cluster stays up: Ctrl-C to stop it")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        print(f"demo took {time.monotonic() - t0:.1f}s; stopping the daemons")
        return 0 if status.state == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
