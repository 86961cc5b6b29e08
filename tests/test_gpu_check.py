"""The GPU check's script path runs here too (``--dry-run`` on the CPU), so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    named = re.search(r"^summary: (.+)$", proc.stdout, re.MULTILINE)
    assert named, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, Path(named.group(1))


def test_gpu_check_dry_run_passes_every_case_and_again_on_the_same_machine(tmp_path):
    proc, summary_path = dry_run(tmp_path)
    summary = json.loads(summary_path.read_text())
    cases = {case["case"]: case for case in summary["cases"]}
    assert proc.returncode == 0, [c for c in summary["cases"] if not c["ok"]]
    expected = {"device_tests", "lora", "resume", "ddp", "vllm", "scale/tiny"}
    expected |= {f"family/{c}/{d}" for c in ("ctwa", "gdpo", "mgda") for d in ("float32", "bfloat16")}
    expected |= {f"loss/{axis}" for axis in ("gspo", "dr_grpo", "dapo", "kl_in_reward")}
    assert set(cases) == expected
    assert cases["ddp"]["skipped"] and cases["vllm"]["skipped"]  # said, not silently passed
    assert all(cases[f"family/mgda/{d}"]["steps"] == 2 for d in ("float32", "bfloat16"))
    assert f"{summary['passed']} passed, 0 failed" in proc.stdout

    # the rerun after a fix, on the same machine and the same --out: a folder of its own, nothing refused
    again, again_path = dry_run(tmp_path, "--only", "family/ctwa/float32,resume,loss/gspo")
    assert again.returncode == 0, again.stdout[-3000:]
    assert again_path.parent.parent == summary_path.parent.parent == tmp_path and again_path != summary_path
    assert "3 passed, 0 failed" in again.stdout
    assert json.loads(summary_path.read_text()) == summary  # the first run's summary is untouched
