"""`ray job submit` against a local Ray head on free ports, as a user would on a cluster."""

from __future__ import annotations

import json
import os
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_job_submit_trains_toy_world(toy_world, tmp_path):
    env = dict(os.environ)
    # The job's `python` must be this venv's, as on a cluster whose nodes run the project's env.
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["RAY_ADDRESS"] = ""
    # A throwaway local head: no token auth (its token file would live in the temp dir).
    env["RAY_AUTH_MODE"] = "disabled"
    # Unix socket paths must stay under 107 bytes, so not pytest's long tmp_path.
    ray_temp = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    gcs_port, dashboard_port = _free_port(), _free_port()
    started = _ray(
        "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
        "--num-cpus=8", f"--temp-dir={ray_temp}", "--disable-usage-stats", env=env,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        run_root = tmp_path / "runs"
        submit = lambda: _ray(  # noqa: E731
            "job", "submit", f"--address=http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
            "--", "python", "-m", "pipelines.train",
            "total_steps=2", "rollout.prompts_per_step=8", "optimizer.mini_batch_prompts=8",
            "rollout.n_on_policy=4", "rollout.n_mixed=2", "rollout.max_response_tokens=48",
            "eval.every_steps=2", "eval.max_problems=8", "checkpoint.every_steps=2",
            f"logging.run_root={run_root}", "logging.run_name=submitted",
            env=env, timeout=900,
        )
        submitted = submit()
        # A head under load may not have its job agent up yet; Ray says to try again later.
        for _ in range(6):
            if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
                break
            time.sleep(5)
            submitted = submit()
        # `ray job submit` waits for the job and exits non-zero unless it SUCCEEDED.
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-5000:]
        logs = submitted.stdout + submitted.stderr
        assert "succeeded" in logs.lower()
        # One console line per step: the driver alone prints them (workers' output is not
        # forwarded), so `ray job submit`'s log holds each once.
        assert logs.count("step 1/2 |") == 1 and logs.count("step 2/2 |") == 1, logs[-5000:]
        run_dir = run_root / "submitted"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 2
        assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3  # step 0 (initial validation), 1, 2
        assert (run_dir / "final_model" / "config.json").is_file()
        assert (run_dir / "plots" / "val_accuracy.png").is_file()
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(ray_temp, ignore_errors=True)
