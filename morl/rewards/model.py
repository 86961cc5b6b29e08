"""A sequence-classification model as a reward: a learned preference or quality score for each completion.

Rule-based rewards check what can be checked; a reward model scores what cannot (helpfulness, harmlessness, style).
This is what TRL's ``GRPOTrainer`` does with a ``reward_funcs`` entry that names a model: load it with
``AutoModelForSequenceClassification`` and its tokenizer, score ``prompt + completion``, take one logit. Here the
model is one more objective of the multi-objective run, logged under the model's name as TRL logs it.

Where it differs from TRL, and why:

- plain-text inputs get the tokenizer's special tokens (BERT-style classifiers are trained with ``[CLS] ... [SEP]``
  and score nonsense without them); chat-templated inputs do not, since the template writes its own;
- ``label`` picks the logit of a multi-logit head (TRL always takes logit 0), and ``output`` can turn logits into a
  probability (``sigmoid`` for a one-logit classifier, ``softmax`` for several labels);
- inputs are scored ``batch_size`` at a time, so a large rollout batch does not run the model out of memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from morl.rewards.base import RewardConfig, RewardFn


class RewardModel(RewardFn):
    """The score a sequence-classification model gives ``prompt + completion`` (one logit, or its probability).

    Rewards whatever the model was trained to prefer. A conversational prompt (chat ``messages``) is rendered
    with the reward model's own chat template, the completion as the assistant's turn; a plain prompt is
    concatenated with the completion, as TRL does. The model loads on first use, in eval mode and without
    gradients, on ``device``: ``"auto"`` means the policy's device (the pipeline tells it), else the CPU.

    Example:
        >>> rm = RewardModel(model="OpenAssistant/reward-model-deberta-v3-large-v2")  # doctest: +SKIP
        >>> rm(prompts=["Say hi."], completions=["Hi!"])  # doctest: +SKIP
        [1.73...]
    """

    name = "reward_model"
    conversational = True

    class Config(RewardConfig):
        model: str = Field(description="local directory or hub name of a sequence-classification model")
        label: int = Field(0, ge=0, description="index of the logit that is the reward (for multi-logit heads)")
        output: Literal["logit", "sigmoid", "softmax"] = Field(
            "logit",
            description="logit: the raw score (as TRL); sigmoid: its probability; softmax: the label's probability",
        )
        batch_size: int = Field(16, ge=1, description="completions per forward pass")
        max_length: int | None = Field(
            None, ge=1, description="tokens per input, longer ones cut (None: the tokenizer's model_max_length)"
        )
        device: str = Field("auto", description="torch device; auto: the policy's (the CPU when used alone)")
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
            "auto", description="weight dtype; auto: the checkpoint's"
        )
        trust_remote_code: bool = Field(False, description="allow model code from the hub (custom architectures)")
        objective: str | None = Field(
            None, description="name the objective is logged under (default: the model's last path component)"
        )

    def objective_name(self) -> str:
        return self.config.objective or Path(self.config.model.rstrip("/")).name or self.name

    def place(self, device: torch.device | str) -> None:
        """Run on ``device`` (the policy's) unless ``config.device`` names one; see :class:`PlacedOnDevice`."""
        self._placed = torch.device(device)
        if getattr(self, "_model", None) is not None:
            self._model.to(self._device())

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"reward_model: {len(prompts)} prompts for {len(completions)} completions")
        model, tokenizer = self._loaded()
        encoded = [self._encode(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float | None] = []
        for start in range(0, len(encoded), self.config.batch_size):
            chunk = encoded[start : start + self.config.batch_size]
            # right padding: models with absolute positions (BERT, GPT-2) would see shifted positions under left
            # padding; the classification head finds each row's last real token either way
            inputs = tokenizer.pad(chunk, padding=True, return_tensors="pt", padding_side="right")
            with torch.inference_mode():
                logits = model(**{k: v.to(self._device()) for k, v in inputs.items()}).logits.float()
            if self.config.output == "softmax":
                logits = logits.softmax(dim=-1)
            values = logits[:, self.config.label]
            if self.config.output == "sigmoid":
                values = values.sigmoid()
            scores.extend(values.tolist())
        return scores

    def _encode(self, tokenizer: Any, prompt: Any, completion: Any) -> dict[str, list[int]]:
        """Token ids of one ``prompt + completion``, through the chat template when the prompt is a conversation."""
        answer = _content(completion)
        limit = self.config.max_length or (tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else None)
        options: dict[str, Any] = {"truncation": True, "max_length": limit} if limit else {}
        if isinstance(prompt, str):
            return dict(tokenizer(prompt + answer, **options))
        if getattr(tokenizer, "chat_template", None):
            turns = completion if not isinstance(completion, str) else [{"role": "assistant", "content": answer}]
            text = tokenizer.apply_chat_template([*prompt, *turns], tokenize=False)
            return dict(tokenizer(text, add_special_tokens=False, **options))
        return dict(tokenizer(_content(prompt) + "\n" + answer, **options))  # a conversation, but no template

    def _loaded(self) -> tuple[torch.nn.Module, Any]:
        """The model and tokenizer, loaded on first use (``__init__`` only stores the config)."""
        if getattr(self, "_model", None) is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from morl.policy import DTYPES, load_options

            cfg = self.config
            tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.model,
                dtype=DTYPES.get(cfg.dtype, "auto"),
                trust_remote_code=cfg.trust_remote_code,
                **load_options(),
            )
            labels = model.config.num_labels
            if cfg.label >= labels:
                raise ValueError(f"reward_model: label={cfg.label}, but {cfg.model} has {labels} output logit(s)")
            if tokenizer.pad_token is None:  # decoder reward models often ship without one; padding needs it
                tokenizer.pad_token = tokenizer.eos_token
            if model.config.pad_token_id is None:  # where the head finds each row's last token
                model.config.pad_token_id = tokenizer.pad_token_id
            self._model = model.eval().requires_grad_(False).to(self._device())
            self._tokenizer = tokenizer
        return self._model, self._tokenizer

    def _device(self) -> torch.device:
        if self.config.device != "auto":
            from morl.policy import resolve_device

            return torch.device(resolve_device(self.config.device))
        return getattr(self, "_placed", None) or torch.device("cpu")


def _content(text_or_messages: Any) -> str:
    """Text of a completion or prompt given as text or as TRL's list of ``{"role", "content"}`` messages."""
    if isinstance(text_or_messages, str):
        return text_or_messages
    return "\n".join(str(m["content"]) for m in text_or_messages)
