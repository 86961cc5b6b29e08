"""Share a finished run's model on the Hugging Face Hub, with a model card written from the run's own record.

``train.push_to_hub: true`` (TRL's name, with ``hub_model_id`` and ``hub_private_repo``) makes the end of a
finished fit write ``RUN_DIR/model/README.md`` and upload ``RUN_DIR/model``. The card says what a reader of a
multi-objective model needs and a plain fine-tuning card leaves out: which objectives were trained, how they were
combined and *where the weights acted* (on rewards, advantages or gradients), the held-out change of each
objective, and the recipe that re-runs the training. It is built from ``manifest.json`` (:class:`morl.run.Manifest`),
never from reprs or metric names parsed back.

The run is the record and the upload only a copy: an upload that fails (no network, no token, no permission) is
reported with the command that retries it, and the run stays finished.

Example:
    >>> card = model_card(run_dir, first_eval, last_eval)  # doctest: +SKIP
    >>> push_run(run_dir, "me/tinymath-ctwa", True, first_eval, last_eval)  # doctest: +SKIP
    'https://huggingface.co/me/tinymath-ctwa'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from morl import metrics as M
from morl.logging import console
from morl.run import Manifest

CARD_FILE = "README.md"
MODEL_DIR = "model"

#: What the same weights mean at each place they can act (the manifest's ``method.weights_act_on``).
WHERE_WEIGHTS_ACT = {
    "reward": "the scalarizer combines the raw rewards with the weights into one score per completion, which is "
    "then normalised in its prompt group once",
    "advantage": "each objective's reward is normalised in its prompt group first, then the weights combine the "
    "per-objective advantages",
    "gradient": "the weights combine the per-objective policy gradients (losses) in every mini-batch",
}


def model_card(run_dir: str | Path, first_eval: dict[str, Any] | None, last_eval: dict[str, Any] | None) -> str:
    """The model card of a run: objectives, method and where its weights act, held-out change, recipe, versions.

    ``first_eval`` and ``last_eval`` are the run's first and last ``eval`` rows (None: the run evaluated nothing).
    """
    run_dir = Path(run_dir)
    manifest = Manifest.load(run_dir)
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} has no manifest.json: only a run written by fit has a model card")
    segment = manifest.current_segment
    recipe = segment.recipe or manifest.recipe
    method = manifest.method
    base = str((recipe.get("policy") or {}).get("model", "unknown"))
    steps = segment.to_step if segment.to_step is not None else (recipe.get("train") or {}).get("steps")
    names = ", ".join(f"`{o.name}`" for o in manifest.objectives)
    front = {"library_name": "transformers", "tags": ["morl", "multi-objective", "reinforcement-learning"]}
    if "/" in base and not Path(base).exists():  # a hub name, not a local folder
        front["base_model"] = base
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {run_dir.resolve().name}",
        "",
        f"`{base}` fine-tuned with morl, multi-objective reinforcement fine-tuning, for {steps} training steps on "
        f"{len(manifest.objectives)} objectives ({names}) at once.",
        "",
        "## Objectives",
        "",
        "| objective | direction | reward | note |",
        "|---|---|---|---|",
    ]
    for o in manifest.objectives:
        note = "moving target: its standard moves during training" if o.moving_target else ""
        lines.append(f"| {o.name} | {o.direction} | `{o.reward}` | {note} |")
    where = WHERE_WEIGHTS_ACT.get(method.weights_act_on, method.weights_act_on)
    lines += [
        "",
        "## Method",
        "",
        f"- weight controller: `{method.controller}`; its weights act on **{method.weights_act_on}s**: {where}",
        f"- weights are normalised: {method.normalization}",
    ]
    if method.scalarizer:
        lines.append(f"- scalarizer: `{method.scalarizer}`")
    lines += [f"- advantage estimator: `{method.advantage}`", f"- policy algorithm: `{method.algo}`", ""]
    lines += _eval_section(first_eval, last_eval, manifest)
    lines += ["## Recipe", "", "The run's `recipe.yaml` (`morl fit` re-runs it; paths are the training machine's):"]
    lines += ["", "```yaml"]
    lines += [yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    if len(manifest.segments) > 1:
        changes = [d for s in manifest.segments for d in s.accepted_differences]
        lines += [f"Trained in {len(manifest.segments)} segments (resumed from checkpoints)."]
        lines += [f"Accepted recipe changes: {'; '.join(changes)}." if changes else "", ""]
    if manifest.versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in manifest.versions.items()), ""]
    return "\n".join(lines)


def _eval_section(first: dict[str, Any] | None, last: dict[str, Any] | None, manifest: Manifest) -> list[str]:
    """The held-out table (greedy and sampled objectives, mean length): start, end and change."""
    if not first or not last:
        return ["## Held-out evaluation", "", "The run evaluated on no held-out prompts.", ""]
    lines = [
        "## Held-out evaluation",
        "",
        f"| metric | step {first['step']} | step {last['step']} | change |",
        "|---|---|---|---|",
    ]
    moving = [o.name for o in manifest.objectives if o.moving_target]
    for mode in M.EVAL_MODES:
        keys = [(f"{mode}/{o.name}", M.eval_metric(mode, o.name)) for o in manifest.objectives]
        keys.append((f"{mode}/{M.MEAN_LENGTH}", M.eval_mean_length(mode)))
        for label, key in keys:
            a, b = first.get(key), last.get(key)
            if a is None or b is None:
                continue
            lines.append(f"| {label} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    if moving:
        lines += ["", f"Moving targets ({', '.join(moving)}): start and end are measured against different standards."]
    return [*lines, ""]


def push_run(
    run_dir: str | Path,
    repo_id: str | None,
    private: bool | None,
    first_eval: dict[str, Any] | None,
    last_eval: dict[str, Any] | None,
) -> str | None:
    """Write the model card into ``RUN_DIR/model`` and upload that folder; the repository's URL, or None when the
    upload failed (reported, with the command that retries it: the run itself is finished either way).

    ``repo_id``: ``user/name``, or ``name`` in the token's own namespace; None: the run directory's name.
    """
    run_dir = Path(run_dir)
    folder = run_dir / MODEL_DIR
    repo_id = repo_id or run_dir.resolve().name
    (folder / CARD_FILE).write_text(model_card(run_dir, first_eval, last_eval))
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            commit_message=f"morl: {run_dir.resolve().name}",
        )
    except Exception as err:  # whatever the upload raises, the finished run must not be lost
        console.print(
            f"[red]push_to_hub: the upload to {repo_id!r} failed[/] ({type(err).__name__}: {err}). The run is "
            f"finished and kept in {run_dir}; retry with `hf upload {repo_id} {folder}` once logged in "
            "(`hf auth login`).",
            soft_wrap=True,
        )
        return None
    console.print(f"pushed {folder} to [bold]{repo.url}[/]", soft_wrap=True)
    return str(repo.url)
