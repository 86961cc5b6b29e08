"""The GPU check's script path runs here too (``--dry-run`` on the CPU), so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_every_case(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    cases = {case["case"]: case for case in summary["cases"]}
    assert proc.returncode == 0, [c for c in summary["cases"] if not c["ok"]]
    expected = {"device_tests", "lora", "resume", "ddp", "vllm", "scale/tiny"}
    expected |= {f"family/{c}/{d}" for c in ("ctwa", "gdpo", "mgda") for d in ("float32", "bfloat16")}
    expected |= {f"loss/{axis}" for axis in ("gspo", "dr_grpo", "dapo", "kl_in_reward")}
    assert set(cases) == expected
    assert cases["ddp"]["skipped"] and cases["vllm"]["skipped"]  # said, not silently passed
    assert all(cases[f"family/mgda/{d}"]["steps"] == 2 for d in ("float32", "bfloat16"))
    assert f"{summary['passed']} passed, 0 failed" in proc.stdout
