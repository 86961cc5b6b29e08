"""The policy: a causal LM and its tokenizer, loaded from any Hugging Face directory or hub name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyConfig(BaseModel):
    """``model`` is ``tinymath`` (the shipped model), a local directory or a hub name."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tinymath"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    chat_template: bool = False
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


class Policy:
    """Model + tokenizer, with the one computation every algorithm needs: per-token log-probs."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: PolicyConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or PolicyConfig()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, model: str = "tinymath", **options) -> Policy:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = PolicyConfig(model=model, **options)
        path = resolve_model_path(config.model)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        net = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code
        ).to(config.device)
        if config.gradient_checkpointing:
            net.gradient_checkpointing_enable()
        return cls(net, tokenizer, config)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return f"Policy(model={self.config.model!r}, parameters={params:,})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frozen_copy(self) -> Policy:
        """A reference policy for the KL term: same weights, no gradients."""
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return Policy(ref, self.tokenizer, self.config)

    def format_prompt(self, prompt: str) -> str:
        if not self.config.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_width: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[N, L]`` of the completion tokens (and their entropies) under this policy."""
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[:, prompt_width - 1 : -1].float()
        if temperature != 1.0:
            logits = logits / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        targets = input_ids[:, prompt_width:]
        logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return logp, entropy

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


def resolve_model_path(model: str) -> str:
    if model == "tinymath":
        from morl.tinymath import default_model_path

        return str(default_model_path())
    return model
