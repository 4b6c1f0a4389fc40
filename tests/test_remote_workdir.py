"""A training workdir on Google Cloud Storage, as `launch/tpu_vm.sh` passes it (`gs://...`),
against a GCS emulator on the loopback interface: config, checkpoints, metrics, samples and
TensorBoard go to the bucket (nothing to a local `gs:` folder), and a fresh process resumes.

The emulator (`tests/gcs_emulator.py`, on `gcp-storage-emulator`, pure Python) speaks the GCS
JSON API that both clients of a run use: gcsfs (etils.epath: Orbax's metadata, config.json,
metrics, samples, TensorBoard's uploaded event files) and TensorStore's GCS driver (Orbax's
arrays).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from deepgin_jax import checkpoint_digests, checkpointing, metric_writers, train_lib
from tests.test_train import REPO, losses_by_step, smoke_config

BUCKET = "deepgin-test"


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_environment(url: str) -> dict[str, str]:
    """Points every GCS client at the emulator, without credentials; anything that would still
    ask a metadata server for a token asks a closed loopback port instead."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: a fixed token
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs in a new process
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no storage-control gRPC calls
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "GCE_METADATA_ROOT": "127.0.0.1:9",
    }


@pytest.fixture(scope="module")
def gcs_bucket(tmp_path_factory):
    """`gs://deepgin-test`, served by an emulator on 127.0.0.1 for this module's tests."""
    port = _free_loopback_port()
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.gcs_emulator", str(port), BUCKET],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    saved = dict(os.environ)
    os.environ.update(emulator_environment(f"http://127.0.0.1:{port}"))
    import fsspec

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # fsspec read its env already
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the GCS emulator did not start"
                time.sleep(0.1)
        yield f"gs://{BUCKET}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        fsspec.config.conf["gcs"].pop("token", None)
        server.terminate()
        server.wait()


def remote_files(url: str) -> list[str]:
    """Every object under `url`, relative to it (listed through gcsfs, not the local disk)."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon")
    fs.invalidate_cache()
    root = url.removeprefix("gs://")
    return sorted(p.removeprefix(root + "/") for p in fs.find(root))


def remote_read(url: str) -> str:
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon").cat(url.removeprefix("gs://")).decode()


def local_gs_folders(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("gs:*")]


def test_a_run_in_a_bucket_writes_there_and_a_new_process_resumes(
    gcs_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where a `pathlib.Path("gs://...")` would have written
    workdir = f"{gcs_bucket}/runs/smoke"
    state = train_lib.train_and_evaluate(smoke_config(), workdir)

    files = remote_files(workdir)
    assert "config.json" in files and "metrics.jsonl" in files
    for step in ("2", "4"):
        assert f"checkpoints/{step}/commit_success.txt" in files, files
        assert f"checkpoints/{step}/meta/metadata" in files
        assert any(f.startswith(f"checkpoints/{step}/generator/") for f in files)
    assert any(f.startswith("samples/samples_") and f.endswith(".png") for f in files)
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files)
    assert local_gs_folders(tmp_path, REPO) == []
    # The digests of the last checkpoint cover every file of it in the bucket.
    record = json.loads(remote_read(f"{workdir}/checkpoints/4/{checkpoint_digests.DIGESTS_FILE}"))
    in_bucket = [f.removeprefix("checkpoints/4/") for f in files if f.startswith("checkpoints/4/")]
    assert sorted(record["files"]) == sorted(set(in_bucket) - {checkpoint_digests.DIGESTS_FILE})

    first = losses_by_step(workdir)
    assert sorted(first) == [1, 2, 3, 4]
    assert checkpointing.read_meta(workdir)["step"] == 4
    _, variables = checkpointing.load_generator(workdir)
    for a, b in zip(
        jax.tree.leaves(variables["params"]), jax.tree.leaves(state.g_params), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    # As if the pod were preempted after step 4's metrics but before its checkpoint: a new
    # process (the same command, as tpu_vm.sh runs it) resumes from step 2 in the bucket.
    (checkpointing.resolve_checkpoint(f"{workdir}/checkpoints/4")).rmtree()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepgin_jax.train",
            f"--config={REPO}/configs/ade20k.py:smoke",
            f"--workdir={workdir}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stderr
    records = metric_writers.read_metrics(workdir)
    steps = [r["step"] for r in records if "g_loss" in r]
    assert steps == [1, 2, 3, 4], "steps 3 and 4 are dropped and written again, once"
    again = losses_by_step(workdir)
    for step in (3, 4):
        assert again[step]["g_loss"] == first[step]["g_loss"], step
    assert "checkpoints/4/commit_success.txt" in remote_files(workdir)
    assert local_gs_folders(tmp_path, REPO) == []
