"""morl inside TRL under ``accelerate launch`` with 2 CPU processes: the same weights as one process on the same
global batch.

``trl_distributed_worker.py`` trains TRL's ``GRPOTrainer`` with morl's CTWA (clipped-weight covariances, so the
log-probs after each update are gathered too) for 4 steps of 2 prompts × 4 completions, 4 completions on each
process, the forecast every 2 steps. Each process records what ``trainer.morl`` weighed and returned. The two
processes must agree exactly (each weighs the whole gathered batch); and one process — morl's hosted step in
this test's process, fed the recorded global batches in order — must give the same advantages, weights and
logged diagnostics to 1e-6. The generation itself differs between a 1- and a 2-process TRL run (each process
samples its own prompts), so the same global batch is the recorded one.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from morl.integrations.host import HostedStep
from morl.integrations.trl import advantage_of, clip_rule
from tests.trl_distributed_worker import CONTROLLER, config

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("trl_distributed_worker.py")
OBJECTIVES = ["accuracy", "clarity", "short"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("trl-2proc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env["OMP_NUM_THREADS"] = "1"
    # accelerate's DDP launcher (torchrun underneath); TRL's use_cpu makes it gloo on the CPU
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(WORKER), str(out),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process TRL run did not finish in 300 s")
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_two_processes_weigh_the_gathered_batch_identically(ranks):
    first, second = ranks
    assert first["world"] == second["world"] == 2
    assert len(first["records"]) == len(second["records"]) == 4
    for a, b in zip(first["records"], second["records"]):
        assert a["scored"].rewards.shape == (8, 3)  # both processes' completions: 2 prompts × 4
        # each process trains on its own rows of the gathered advantages, in TRL's process order
        assert torch.equal(a["local_advantages"], a["advantages"][:4].to(a["local_advantages"]))
        assert torch.equal(b["local_advantages"], a["advantages"][4:].to(b["local_advantages"]))
        assert torch.equal(a["scored"].rewards, b["scored"].rewards)
        assert torch.equal(a["advantages"], b["advantages"])
        assert torch.equal(a["new_logprobs"], b["new_logprobs"])
        timeless = {k: v for k, v in a["metrics"].items() if not k.startswith("timing/")}
        assert timeless == {k: v for k, v in b["metrics"].items() if not k.startswith("timing/")}
    assert first["param_sum"] == second["param_sum"] and first["param_norm"] == second["param_norm"]
    moved = [r["metrics"]["weights/accuracy"] for r in first["records"]]
    assert moved[-1] > moved[0] + 0.1  # CTWA raised accuracy's weight: the comparison below is not of constants
    assert any(k.startswith("forecast/change/") for r in first["records"] for k in r["metrics"])


def test_one_process_on_the_same_global_batch_gives_the_same_numbers(ranks, tmp_path):

    args = config(str(tmp_path))
    one = HostedStep(
        CONTROLLER,
        OBJECTIVES,
        advantage=advantage_of(args),
        algo=clip_rule(args),
        diagnostics={"forecast_every": 0},  # the forecast runs the model: compared between the processes above
    )
    compared = 0
    for record in ranks[0]["records"]:
        weighted = one.weigh(record["scored"])
        torch.testing.assert_close(weighted.advantages.cpu(), record["advantages"], rtol=0, atol=1e-6)
        metrics = one.observe_update(record["new_logprobs"])
        shared = {k for k in set(metrics) & set(record["metrics"]) if not k.startswith("timing/")}
        assert {f"weights/{o}" for o in OBJECTIVES} | {f"cov/clipped_weight/{o}" for o in OBJECTIVES} <= shared
        for key in shared:
            assert math.isclose(metrics[key], record["metrics"][key], rel_tol=0, abs_tol=1e-6), key
            compared += 1
    assert compared > 100
