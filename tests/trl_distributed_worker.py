"""One process of a TRL ``GRPOTrainer`` run with morl's CTWA under ``accelerate launch`` (see test_trl_distributed.py).

Every process records what morl's hosted step received and returned on each training step: the gathered batch it
weighed, the advantages and weights, the log-probs after the update and the logged metrics (``trainer.morl``'s
public methods, wrapped); the advantages TRL's loss then uses on this process; and a checksum of the model's
parameters at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig

from morl.integrations.trl import MorlGRPOTrainer, trl_reward
from morl.rewards import Accuracy, Clarity
from morl.tinymath import default_model_path, make_split

CONTROLLER = {"name": "ctwa", "targets": [0.45, 0.0, 0.0], "lr": 0.5, "u_max": 1.0}
DIAGNOSTICS = {"forecast_every": 2}


def short(completions, **kwargs):
    return [1.0 if len(c) < 12 else 0.0 for c in completions]


def config(output_dir: str) -> GRPOConfig:
    """2 prompts × 4 completions per generation batch: 4 completions on each of 2 processes."""
    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model = str(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    trainer = MorlGRPOTrainer(
        model=model,
        reward_funcs=[trl_reward(Accuracy()), trl_reward(Clarity()), short],
        args=config(str(out / "trl")),
        train_dataset=Dataset.from_list(make_split("train", 64, seed=0)),
        processing_class=tokenizer,
        controller=CONTROLLER,
        diagnostics=DIAGNOSTICS,
    )
    records: list[dict] = []
    weigh, observe = trainer.morl.weigh, trainer.morl.observe_update

    def recording_weigh(scored):
        weighted = weigh(scored)
        records.append({"scored": scored, "advantages": weighted.advantages.detach().cpu()})
        return weighted

    def recording_observe(new_logprobs):
        metrics = observe(new_logprobs)
        records[-1].update(new_logprobs=new_logprobs.detach().cpu(), metrics=dict(metrics))
        return metrics

    generate = trainer._generate_and_score_completions  # the TRL method the integration extends

    def recording_generate(inputs):
        output = generate(inputs)
        records[-1]["local_advantages"] = output["advantages"].detach().cpu()  # what this process's loss uses
        return output

    trainer.morl.weigh, trainer.morl.observe_update = recording_weigh, recording_observe
    trainer._generate_and_score_completions = recording_generate
    trainer.train()
    params = torch.cat([p.detach().double().flatten() for p in trainer.model.parameters()])
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    torch.save(
        {"records": records, "world": world, "param_sum": float(params.sum()), "param_norm": float(params.norm())},
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
