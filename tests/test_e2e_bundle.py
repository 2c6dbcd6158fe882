"""Code bundles end to end: the client packs a folder, uploads it once, and every attempt runs in it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gridlab.client.localcluster import LocalCluster

MAIN = """
import os, pathlib
print("data:", pathlib.Path("../data.txt").read_text().strip(), "cwd:", os.path.basename(os.getcwd()))
print("ignored present:", pathlib.Path("../scratch.log").exists())
"""


@pytest.mark.slow
def test_a_run_ships_its_folder_starts_in_its_workdir_and_a_second_run_reuses_the_upload(
    make_cluster, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text(MAIN)
    (project / "data.txt").write_text("forty-two\n")
    (project / "scratch.log").write_text("not shipped\n")
    (project / ".gitignore").write_text("*.log\n")
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("box")
    client = cluster.client()
    first = client.submit([sys.executable, "main.py"], code=project, workdir="src", name="bundled")
    assert first.wait(timeout=60).state == "SUCCEEDED", list(client.logs(first.id))
    assert list(client.logs(first.id)) == ["data: forty-two cwd: src", "ignored present: False"]
    second = client.submit([sys.executable, "main.py"], code=project, workdir="src")
    assert second.wait(timeout=60).state == "SUCCEEDED"
    spec_a, spec_b = client.get_run(first.id).spec, client.get_run(second.id).spec
    assert spec_a.code_digest == spec_b.code_digest
    assert spec_a.code_digest.startswith("sha256:")
    bundles = list((cluster.root / "agents" / "box" / "bundles").glob("*.tar.gz"))
    assert len(bundles) == 1  # fetched once, cached by digest


@pytest.mark.slow
def test_a_workdir_missing_from_the_bundle_fails_the_run_without_retries(make_cluster, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.py").write_text("print(1)\n")
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("box")
    client = cluster.client()
    run = client.submit([sys.executable, "x.py"], code=tmp_path / "p", workdir="nope", max_retries=3)
    status = run.wait(timeout=60, raise_on_failure=False)
    assert status.state == "FAILED"
    assert status.attempts == 1  # permanent: retrying cannot help
    assert "workdir 'nope' is not a folder in the code bundle" in status.message
