"""Data parallelism (morl.distributed): a 2-process gloo run equals a 1-process run of the same global batch.

``distributed_worker.py`` fits 2 steps of 4 prompts × 4 completions with each method, once in one process and
once in 2 processes (torchrun environment, accelerate DDP on the CPU with gloo, 2 prompts per process). Both runs
see the same completions (each prompt is sampled under its own seed), so every difference comes from floating
point: the 2-process gradient is a sum of per-process partial sums, summed in another order than one process's
accumulation (~1e-7 relative in float32). Adam's first steps divide by ``|g| + eps``, so a gradient component at
the rounding level (~1e-10) can move a parameter by ``lr · 1e-10 / eps``: with lr 5e-4 that is ~5e-6 (measured:
≤ 1e-5), against updates of ~2e-3. Hence ``atol=5e-5`` on parameters (10% of one lr-sized step), a relative
1e-5 on controller state and 1e-4 on logged metrics. The two processes must agree exactly with each other.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from morl import distributed
from morl.batch import Batch, concat_batches
from morl.run import Manifest

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
METHODS = ("fixed", "ctwa", "gradnorm")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(out: Path, world: int, rank: int, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env["OMP_NUM_THREADS"] = "1"
    if world > 1:
        env.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    log = (out / f"log-{world}proc-rank{rank}.txt").open("w")
    return subprocess.Popen([sys.executable, str(WORKER), str(out)], cwd=REPO, env=env, stdout=log, stderr=log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    procs = {(w, r): _start(out, w, r, port) for w, r in ((2, 0), (2, 1), (1, 0))}
    for (world, rank), proc in procs.items():
        try:
            code = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            pytest.fail(f"the {world}-process run timed out")
        log = (out / f"log-{world}proc-rank{rank}.txt").read_text()
        assert code == 0, f"{world}-process run, rank {rank} failed:\n{log[-3000:]}"
    return out


def _load(out: Path, world: int, rank: int, method: str) -> dict:
    return torch.load(out / f"{world}proc-rank{rank}-{method}.pt", weights_only=False)


def _close(a, b, rel: float = 1e-5) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-9, nan_ok=True)
    return a == b


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one(runs, method):
    rank0, rank1, single = (_load(runs, w, r, method) for w, r in ((2, 0), (2, 1), (1, 0)))
    # the two processes hold identical weights, controller and reward state and metrics
    assert all(torch.equal(rank0["params"][k], rank1["params"][k]) for k in rank0["params"])
    assert rank0["controller"] == rank1["controller"] and rank0["rewards"] == rank1["rewards"]
    assert rank0["history"] == rank1["history"]
    # ... equal to one process's, within float tolerance (module docstring)
    from safetensors.torch import load_file

    from morl.tinymath import default_model_path

    initial = load_file(Path(default_model_path()) / "model.safetensors")
    moved = max(float((single["params"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-3  # it trained: the comparison is not vacuous
    for name, value in single["params"].items():
        torch.testing.assert_close(rank0["params"][name], value, rtol=0, atol=5e-5, msg=name)
    assert _close(rank0["controller"], single["controller"])
    assert rank0["rewards"] == single["rewards"]  # e.g. conciseness's running mean over the whole batch
    assert [r["kind"] for r in rank0["history"]] == [r["kind"] for r in single["history"]]
    for ours, theirs in zip(rank0["history"], single["history"]):
        assert ours.keys() == theirs.keys()
        for key in ("reward", "loss", "grad_norm", "completions/mean_length", *[k for k in ours if "/" in k]):
            assert _close(ours[key], theirs[key], rel=1e-4), key


def test_only_process_zero_writes(runs):
    for method in METHODS:
        run = runs / f"run-2proc-{method}"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]  # one writer
        assert (run / "model").is_dir() and (run / "training_state.json").is_file()
        assert [s.status for s in Manifest.load(run).segments] == ["finished"]
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]


def test_single_process_helpers_are_no_ops():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    x = torch.tensor([1.0, -2.0])
    assert distributed.all_reduce_sum(x) is x and distributed.all_reduce_max(x) is x
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(3) == 3
    assert distributed.shard_slice(8) == slice(0, 8)
    assert distributed.shard_padded([1, 2, 3]) == ([1, 2, 3], 3)


def _batch(prompt_width: int, completion: list[list[int]], old: float) -> Batch:
    n, length = len(completion), len(completion[0])
    ids = torch.cat([torch.full((n, prompt_width), 7), torch.tensor(completion)], dim=1)
    mask = (torch.tensor(completion) != 0).long()
    return Batch(
        prompts=["p"] * n,
        completions=["c"] * n,
        columns={"answer": ["1"] * n},
        group_size=n,
        input_ids=ids,
        attention_mask=torch.cat([torch.ones(n, prompt_width, dtype=torch.long), mask], dim=1),
        completion_mask=mask,
        prompt_width=prompt_width,
        old_logprobs=torch.full((n, length), old) * mask,
    )


def test_concat_batches_repads_prompts_left_and_completions_right():
    a = _batch(2, [[5, 6, 0], [5, 0, 0]], old=-1.0)
    b = _batch(3, [[4], [4]], old=-2.0)
    both = concat_batches([a, b], pad_token_id=0)
    assert both.prompt_width == 3 and both.input_ids.shape == (4, 6) and both.group_size == 2
    assert both.input_ids[0].tolist() == [0, 7, 7, 5, 6, 0]  # one more pad on the left of a's prompts
    assert both.attention_mask[0].tolist() == [0, 1, 1, 1, 1, 0]
    assert both.input_ids[2].tolist() == [7, 7, 7, 4, 0, 0]  # b's completions padded on the right
    assert both.completion_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert both.old_logprobs[2].tolist() == [-2.0, 0.0, 0.0] and both.ref_logprobs is None
    assert both.columns == {"answer": ["1"] * 4} and both.prompts == ["p"] * 4


def test_micro_batches_accumulate_the_mini_batch_gradient(tiny_policy):
    """Splitting a mini-batch into micro-batches (weighted by their token shares) leaves the update unchanged."""
    import copy

    from morl.components import build
    from morl.rollout import TransformersRollout

    torch.manual_seed(0)
    batch = TransformersRollout(max_new_tokens=6).generate(tiny_policy, ["1+2=", "3-1="], {}, 3)
    batch.advantages = torch.randn(batch.size)
    batch.ref_logprobs = batch.old_logprobs - 0.05
    results = []
    for micro in (None, 2, 4):
        policy = copy.deepcopy(tiny_policy)
        algo = build("algo", {"name": "grpo", "kl_coef": 0.1, "epochs": 2, "micro_batch_size": micro})
        sgd = torch.optim.SGD(policy.model.parameters(), lr=0.1)
        metrics = algo.update(policy, sgd, batch)
        results.append(([p.detach().clone() for p in policy.model.parameters()], metrics))
    (whole, m0), *others = results
    for params, metrics in others:
        for a, b in zip(whole, params):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert metrics["loss"] == pytest.approx(m0["loss"], rel=1e-5, abs=1e-7)
        assert metrics["kl"] == pytest.approx(m0["kl"], rel=1e-5, abs=1e-9)


def test_trainer_recomputes_old_logprobs_when_the_engine_is_not_the_trainer(tiny_policy):
    """A backend that returns only its own log-probs (as vLLM): the pipeline recomputes ``old_logprobs`` with the
    trainer in micro-batches and logs the mismatch and the importance ratios."""
    from morl.pipeline import Pipeline, TrainConfig
    from morl.rollout import TransformersRollout

    class EngineRollout(TransformersRollout):
        def generate(self, policy, prompts, columns, k, *, greedy=False):
            batch = super().generate(policy, prompts, columns, k, greedy=greedy)
            self.trainer_logprobs_ = batch.old_logprobs
            batch.sampling_logprobs = (batch.old_logprobs - 0.3) * batch.completion_mask  # a biased engine
            batch.old_logprobs = None
            return batch

    rollout = EngineRollout(max_new_tokens=6)
    pipe = Pipeline(
        tiny_policy,
        ["accuracy", "conciseness", "clarity"],
        algo={"name": "grpo", "micro_batch_size": 3, "importance_correction": "token_truncate", "importance_cap": 1.2},
        rollout=rollout,
        config=TrainConfig(prompts_per_step=2, group_size=3, progress=False),
        diagnostics=False,
    )
    from morl.tinymath.task import make_split

    record, metrics = pipe.step(make_split("train", 2, 0))
    torch.testing.assert_close(record.rollout.old_logprobs, rollout.trainer_logprobs_, rtol=0, atol=1e-5)
    assert metrics["sampling/logp_difference/mean"] == pytest.approx(0.3, abs=1e-4)
    assert metrics["sampling/importance_ratio/max"] == pytest.approx(1.2)  # exp(0.3) = 1.35, capped
    assert metrics["sampling/importance_capped"] == pytest.approx(1.0)


def test_launch_command_runs_morl_fit_under_accelerate(tmp_path):
    from morl.cli import launch_command

    command = launch_command(2, Path("r.yaml"), ["train.steps=3"], output_dir="out", resume="latest")
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("-m", 3) :] == [
        "-m", "morl", "fit", "r.yaml", "--set", "train.steps=3", "--output-dir", "out", "--resume", "latest",
    ]  # fmt: skip
    with_config = launch_command(4, Path("r.yaml"), [], config_file=Path("cookbook/accelerate/fsdp.yaml"))
    assert "--multi_gpu" not in with_config and with_config[3:5] == ["--config_file", "cookbook/accelerate/fsdp.yaml"]
