"""morl inside TRL (morl.integrations.trl): the same numbers as morl's own math, TRL's real trainer with every
hostable family, refusals that say why, and the controller's state in TRL's checkpoints.

The numbers test replaces TRL's generation by a fixed batch dict (the keys TRL's ``_generate_and_score_completions``
returns) and TRL's forward by fixed log-probs, so what is compared is the glue (where the rewards and log-probs come
from in TRL's batch, which rows, which mask) and the driving of morl's components, against morl's components driven
by hand as morl's ``Trainer`` drives them (``Trainer.step`` / ``Trainer._updated``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

import trl
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from morl.algos import GRPO, GroupNorm, per_objective_advantages
from morl.batch import Batch
from morl.callbacks import FitContext, StepContext
from morl.components import RecipeError, build
from morl.diagnostics import Diagnostics
from morl.integrations.host import HostedStep
from morl.integrations.trl import STATE_FILE, MorlGRPOTrainer, rollout_from_trl, trl_reward
from morl.rewards import Accuracy, Clarity, Conciseness
from morl.scalarize import Linear
from morl.stages import Need, Scored, Updated
from morl.tinymath import default_model_path, make_split

MODEL = str(default_model_path())
K = 4  # completions per prompt
OBJECTIVES = ["accuracy", "clarity", "short"]


def short(completions, **kwargs):
    return [1.0 if len(c) < 12 else 0.0 for c in completions]


def _rewards():
    return [trl_reward(Accuracy()), trl_reward(Clarity()), short]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids for generate (older TRL)
    return tokenizer


@pytest.fixture(scope="module")
def data():
    return Dataset.from_list(make_split("train", 64, seed=0))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(tmp_path, tokenizer, data, controller=None, rewards=None, model=MODEL, **settings) -> MorlGRPOTrainer:
    extra = {k: settings.pop(k) for k in ("diagnostics", "advantage") if k in settings}
    config = {
        "output_dir": str(tmp_path / "trl"),
        "per_device_train_batch_size": 8,
        "num_generations": K,
        "max_completion_length": 16,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    args = GRPOConfig(**{**config, **settings})
    return MorlGRPOTrainer(
        model=model,
        reward_funcs=rewards if rewards is not None else _rewards(),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        controller=controller,
        **extra,
    )


# ---- the same numbers as morl's own math --------------------------------------------------------------------------

HOSTABLE = {
    "fixed": ({"name": "fixed", "weights": [0.5, 0.3, 0.2]}, {"clipped_weights": True}),
    "schedule": ({"name": "schedule", "start": [1.0, 0.0, 0.0], "end": [0.0, 0.5, 0.5], "steps": 2}, {}),
    "ctwa": ({"name": "ctwa", "targets": [0.45, 0.0, 0.0], "lr": 0.5, "u_max": 1.0}, {}),
    "ctwa_correlation": ({"name": "ctwa", "signal": "correlation", "targets": 0.5, "lr": 0.5}, {}),
    "lagrangian": ({"name": "lagrangian", "primary": "accuracy", "targets": [0.9, 0.9], "dual_lr": 0.5}, {}),
    "gdpo": ({"name": "gdpo", "weights": [1.0, 0.5, 2.0]}, {"clipped_weights": True}),
}


def _batches(seed: int, with_old: bool):
    """Two fixed generation batches as TRL's batch dict (2 prompts × 4 completions), their rewards [N, M] (one
    reward not applicable) and the completion log-probs under the sampling and the updated policy."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        n, width, length = 2 * K, 3, 5
        prompt_mask = torch.ones(n, width, dtype=torch.long)
        prompt_mask[::2, 0] = 0  # left padding
        completion_mask = torch.arange(length).expand(n, length) < torch.randint(2, length + 1, (n, 1), generator=gen)
        old = -torch.rand(n, length, generator=gen) * 2
        new = old + 0.3 * torch.randn(n, length, generator=gen)  # enough movement that some tokens clip
        inputs = {
            "prompt_ids": torch.randint(3, 60, (n, width), generator=gen),
            "prompt_mask": prompt_mask,
            "completion_ids": torch.randint(3, 60, (n, length), generator=gen),
            "completion_mask": completion_mask.long(),
            "advantages": torch.zeros(n),  # TRL's own, replaced
        }
        if with_old:
            inputs["old_per_token_logps"] = old
        rewards = torch.randint(0, 2, (n, len(OBJECTIVES)), generator=gen).float()
        rewards[3, 1] = math.nan
        out.append((inputs, rewards, old, new))
    return out


def _reference(spec, diagnostics, batches):
    """morl's components driven as ``Trainer.step`` drives them; returns (advantages, metrics) per step and the
    controller's final state."""
    controller = build("controller", spec)
    controller.start(OBJECTIVES)
    estimator, scalarizer, algo = GroupNorm(), Linear(), GRPO(clip_low=0.2, clip_high=0.2)
    diag = Diagnostics(forecast_every=0, **diagnostics)
    fit = FitContext(run_dir=None, objectives=tuple(OBJECTIVES), policy=None, algo=algo, start_step=0, is_main=False)
    diag.on_fit_start(fit)
    steps = []
    for step, (inputs, rewards, old, new) in enumerate(batches, start=1):
        mask = inputs["completion_mask"]
        batch = Batch(
            prompts=[""] * len(rewards),
            completions=[""] * len(rewards),
            columns={},
            group_size=K,
            input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            attention_mask=torch.cat([inputs["prompt_mask"], mask], 1),
            completion_mask=mask,
            prompt_width=inputs["prompt_ids"].shape[1],
            old_logprobs=old * mask,  # Trainer.logprobs: 0 off the mask
        )
        scored = Scored(rollout=batch, rewards=rewards, objectives=tuple(OBJECTIVES))
        controller.before_update(scored)
        needs = set(controller.needs) | set(diag.needs)
        per_objective = None
        if Need.OBJECTIVE_ADVANTAGES in needs:
            per_objective = per_objective_advantages(estimator, rewards, K, mask.sum(dim=1))
        weighted = controller.weigh(
            scored, scalarizer=scalarizer, advantage=estimator, objective_advantages=per_objective
        )
        if Need.CLIPPED_WEIGHTS in needs:
            new_logp = new * mask
            clip = algo.loss(new_logp, weighted.train)
            updated = Updated(
                weighted=weighted,
                stats={},
                clipped_weights=algo.clipped_advantage_weight(new_logp, weighted.train, clip),
                new_ratio=clip.ratio,
                new_unclipped=clip.unclipped,
            )
        else:
            updated = Updated(weighted=weighted, stats={})
        controller.after_update(updated)
        metrics = controller.metrics()
        metrics.update(controller.used_weights(weighted))
        diag.on_step_end(StepContext(fit=fit, step=step, record=updated, metrics=metrics))
        steps.append((weighted.advantages.clone(), metrics))
    return steps, controller.state_dict()


def _close(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= 1e-6


# TRL gives its old log-probs when it needs them (vLLM, several optimizer steps per generation); otherwise the glue
# computes them: that matters where clipped weights are computed
CASES = [(name, True) for name in HOSTABLE] + [("ctwa", False), ("fixed", False)]


@pytest.mark.parametrize(("name", "with_old"), CASES, ids=[f"{n}-{'trl' if o else 'own'}-old-logps" for n, o in CASES])
def test_same_weights_advantages_and_diagnostics_as_morl(name, with_old, tmp_path, tokenizer, data, monkeypatch):
    spec, diagnostics = HOSTABLE[name]
    batches = _batches(seed=len(name), with_old=with_old)
    expected, expected_state = _reference(spec, diagnostics, batches)

    trainer = _trainer(tmp_path, tokenizer, data, spec, diagnostics={"forecast_every": 0, **diagnostics})
    trainer.model.train()
    current: dict = {}

    def generate_and_score(self, inputs):  # TRL's method: its reward call, then its batch dict
        self._calculate_rewards(inputs, ["p"] * 8, ["c"] * 8, [[1]] * 8)
        return dict(current["inputs"])

    def forward(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kw):
        inputs = current["inputs"]  # the glue hands TRL's forward TRL's own tensors
        assert torch.equal(input_ids, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1))
        assert torch.equal(attention_mask, torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1))
        return current["logps"][:, -logits_to_keep:], None

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", generate_and_score)
    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", lambda self, *a: current["rewards"])
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", forward)

    for (inputs, rewards, old, new), (advantages, metrics) in zip(batches, expected):
        current.update(inputs=inputs, rewards=rewards, logps=old)
        trainer._metrics["train"].clear()
        output = trainer._generate_and_score_completions([{}] * 8)
        assert torch.allclose(output["advantages"], advantages, atol=1e-6, rtol=0)
        current["logps"] = new  # the optimizer step happened
        trainer.callback_handler.on_step_end(trainer.args, trainer.state, trainer.control)
        logged = {key: values[-1] for key, values in trainer._metrics["train"].items()}
        metrics = {k: v for k, v in metrics.items() if k != "timing/diagnostics"}
        assert metrics.keys() <= logged.keys()
        wrong = {k: (logged[k], v) for k, v in metrics.items() if not _close(logged[k], float(v))}
        assert not wrong, wrong
    state = trainer.morl.controller.state_dict()
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        if key != "objectives_":
            assert torch.allclose(
                torch.tensor(state[key]).double(), torch.tensor(value).double(), atol=1e-6, equal_nan=True
            )
    if "clipped_weights" in diagnostics or name.startswith("ctwa"):
        assert any(k.startswith("cov/clipped_weight/") for k in logged)


def test_rollout_from_trl_reads_the_loss_mask_and_the_engine_log_probs():
    inputs = {
        "prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
        "completion_ids": torch.tensor([[10, 11], [12, 0]]),
        "completion_mask": torch.tensor([[1, 1], [1, 0]]),
        "tool_mask": torch.tensor([[1, 0], [1, 1]]),
        "old_per_token_logps": torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]),
        "sampling_per_token_logps": torch.tensor([[-1.5, math.nan], [-3.0, 0.0]]),
    }
    batch = rollout_from_trl(inputs, group_size=2)
    assert batch.input_ids.tolist() == [[0, 5, 6, 10, 11], [7, 8, 9, 12, 0]]
    assert batch.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]  # the forward's mask: TRL's
    assert batch.completion_mask.tolist() == [[1, 0], [1, 0]]  # the loss's mask: tool outputs left out
    assert batch.prompt_width == 3 and batch.group_size == 2
    assert batch.sampling_logprobs.tolist() == [[-1.5, -2.0], [-3.0, 0.0]]  # unscored by vLLM: no correction


# ---- TRL's real trainer, every hostable family ---------------------------------------------------------------------

FAMILIES = {
    "fixed": None,  # TRL's own reward_weights, as morl's fixed controller
    "ctwa": {"name": "ctwa", "targets": {"accuracy": 0.45, "clarity": 0.0, "short": 0.0}, "lr": 0.5, "u_max": 1.0},
    "ctwa_forecast": {"name": "ctwa", "signal": "forecast", "forecast_every": 1, "targets": 0.0, "lr": 1.0},
    "lagrangian": {"name": "lagrangian", "primary": "short", "targets": [0.9, 0.9], "dual_lr": 0.5},
    "gdpo": {"name": "gdpo"},
    "schedule": {"name": "schedule", "start": [1.0, 0.0, 0.0], "end": [0.0, 0.0, 1.0], "steps": 2},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trl_trainer_runs_every_hostable_family(family, tmp_path, tokenizer, data, one_thread):
    diagnostics = {"forecast_every": 1, "grad_cosine_every": 2 if family == "gdpo" else 0}
    trainer = _trainer(tmp_path, tokenizer, data, FAMILIES[family], diagnostics=diagnostics)
    before = trainer.morl.controller.state_dict()
    trainer.train()
    rows = [row for row in trainer.state.log_history if "loss" in row]
    assert len(rows) == 3
    for row in rows:
        for name in OBJECTIVES:
            for key in (f"rewards/{name}/mean", f"weights/{name}", f"cov/score/{name}", f"alarm/{name}"):
                assert key in row, (key, sorted(row))
        assert f"forecast/alarm/{OBJECTIVES[0]}" in row
    assert any(f"forecast/change/{name}" in row for row in rows for name in OBJECTIVES)
    after = trainer.morl.controller.state_dict()
    assert trainer.morl.updates_ == 3
    if family.startswith("ctwa"):
        assert after["u_"] != before["u_"]  # CTWA moved its log-weights
        assert "ctwa/u/accuracy" in rows[-1]
        if family == "ctwa":
            assert "cov/clipped_weight/accuracy" in rows[-1] and "clip/removed_mass" in rows[-1]
    if family == "lagrangian":
        assert after["lambdas_"] != before["lambdas_"]  # the duals rose on the unmet constraints
        assert rows[-1]["weights/accuracy"] > 0 and "lagrangian/lambda/clarity" in rows[-1]
    if family == "schedule":
        assert [row["weights/short"] for row in rows] == [0.0, 0.5, 1.0]
    if family == "gdpo":  # the gradient diagnostics differentiate TRL's log-probs
        assert "grad_cos/accuracy/clarity" in rows[1] and "grad_align/short" in rows[1]
    if family == "fixed":
        assert trainer.morl.controller.name == "fixed" and after["weights_"] == [1.0, 1.0, 1.0]


# ---- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad", "gradnorm", "pama", "dynamic_gradient"])
def test_gradient_level_controllers_are_refused_with_the_reason_and_an_alternative(name):
    with pytest.raises(RecipeError, match="gradient level") as err:
        MorlGRPOTrainer(model="never-loaded", reward_funcs=[short], controller=name)
    assert "compute_loss" in str(err.value) and "lagrangian" in str(err.value) and "Pipeline" in str(err.value)


def test_a_controller_that_needs_validation_prompts_is_refused():
    with pytest.raises(RecipeError, match="validation prompts"):
        MorlGRPOTrainer(model="never-loaded", reward_funcs=[short], controller="dynamic_hv")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reward_weights": [1.0, 2.0, 1.0]}, "give the weights to the controller"),
        ({"multi_objective_aggregation": "normalize_then_sum"}, "gdpo"),
        ({"loss_type": "cispo"}, "loss_type='cispo'"),
        ({"delta": 2.0}, "two-sided"),
        ({"scale_rewards": "batch"}, "advantage="),
    ],
)
def test_trl_settings_a_controller_would_silently_override_are_refused(settings, message, tmp_path, tokenizer, data):
    missing = set(settings) - {f.name for f in dataclasses.fields(GRPOConfig)}
    if missing:
        pytest.skip(f"this TRL has no {sorted(missing)}")
    controller = FAMILIES["ctwa"] if "scale_rewards" not in settings else None
    with pytest.raises(RecipeError, match=message):  # before TRL loads the model
        _trainer(tmp_path, tokenizer, data, controller, model="never-loaded", **settings)


# ---- checkpoints ---------------------------------------------------------------------------------------------------


RESUMED_CTWA = {"name": "ctwa", "targets": [0.45, 0.0, 0.0], "lr": 0.5, "u_max": 1.0}


def test_the_controller_state_is_saved_in_trl_checkpoints_and_resumed(tmp_path, tokenizer, data, one_thread):
    def run(folder, steps, resume=None):
        trainer = _trainer(
            folder,
            tokenizer,
            data,
            RESUMED_CTWA,
            rewards=[trl_reward(Accuracy()), trl_reward(Clarity()), trl_reward(Conciseness())],
            diagnostics={"forecast_every": 1},
            max_steps=steps,
            save_strategy="steps",
            save_steps=2,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run(tmp_path / "whole", 4)
    saved = json.loads((tmp_path / "whole/trl/checkpoint-2" / STATE_FILE).read_text())
    assert saved["updates"] == 2
    assert {"controller", "diagnostics", "forecast", "reward/conciseness"} <= saved["parts"].keys()
    assert (tmp_path / "whole/trl/checkpoint-2/morl_state.safetensors").is_file()  # the forecast's snapshot

    fresh = _trainer(
        tmp_path / "fresh",
        tokenizer,
        data,
        RESUMED_CTWA,
        diagnostics={"forecast_every": 1},
        rewards=[trl_reward(Accuracy()), trl_reward(Clarity()), trl_reward(Conciseness())],
    )
    fresh.load_morl_state(tmp_path / "whole/trl/checkpoint-2")  # restoring alone gives back what was saved
    assert fresh.morl.controller.state_dict() == saved["parts"]["controller"]["state"]
    assert fresh.morl.updates_ == 2 and fresh.morl.forecast_window.snapshot_ is not None

    resumed = run(tmp_path / "resumed", 4, resume=str(tmp_path / "whole/trl/checkpoint-2"))
    assert resumed.morl.updates_ == 4
    # TRL's own resume is bit-reproducible on the CPU with fixed seeds, so the whole trajectory is the same
    assert resumed.morl.controller.state_dict() == whole.morl.controller.state_dict()
    assert resumed.reward_funcs[2].state_dict() == whole.reward_funcs[2].state_dict()


# ---- what the docs and pyproject.toml promise ----------------------------------------------------------------------


def test_the_documented_change_is_at_most_five_lines_and_builds(tmp_path):
    page = (Path(__file__).resolve().parents[1] / "docs" / "trl-integration.md").read_text()
    diff = page.split("```diff\n", 1)[1].split("```", 1)[0].splitlines()
    changed = [line for line in diff if line.startswith(("+", "-"))]
    assert 0 < len(changed) <= 5, changed
    after = "\n".join(line[1:] for line in diff if not line.startswith("-"))
    compile(after, "trl-integration.md", "exec")
    spec = ast.literal_eval(after.split("controller=", 1)[1].rsplit(",", 1)[0])
    HostedStep(spec, ["accuracy_reward", "think_format_reward"], diagnostics=False)  # a valid, hostable controller


def test_the_trl_extra_allows_the_checked_range():
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    spec = requirements.Requirement(project["optional-dependencies"]["trl"][0]).specifier
    assert {"0.20.0", "1.0.0", "1.16.0"} <= set(spec.filter(["0.19.1", "0.20.0", "1.0.0", "1.16.0", "2.0.0"]))
    assert "0.19.1" not in spec and "2.0.0" not in spec
    assert trl.__version__ in spec
