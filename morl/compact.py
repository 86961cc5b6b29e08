"""A compact forward pass of Llama-family decoders, for sampling: the same function as the model's own forward, without
transformers' per-call machinery (mask building, cache objects, output records, module dispatch).

At the sizes morl trains on a CPU (and for small batches on a GPU), decoding a token costs per-call overhead more
than arithmetic. This pass reads the model's own parameters (no copy but the fused q/k/v and gate/up matrices,
rebuilt on every :meth:`CompactDecoder.refresh`), keeps its KV cache preallocated, and computes the rotary tables
with the model's own rotary module, so rope scaling follows the model's config. peft's LoRA adapters (one plain
adapter active per layer) are part of the pass: each fused projection adds its adapters' low-rank product. It only
runs models whose every module it knows (:func:`unsupported_reason` says why not otherwise);
:class:`morl.rollout.TransformersRollout` also compares its logits with the model's own forward on first use and
falls back to ``generate`` if they differ. One decoding step of the TinyMath model over 64 rows: 2.1 ms against 2.7
ms for the model's own forward (``benchmarks/decoding.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # rotary tables that depend on the position only


@dataclass
class _Projection:
    """Parallel linear layers as one: ``x W^T + b``, plus their LoRA adapters' ``(x A^T) U^T`` where ``A`` stacks
    the adapters' down-projections and ``U`` holds each up-projection times its scaling, block by block."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.down is None:
            return y
        return (y + F.linear(F.linear(x.to(self.down.dtype), self.down), self.up)).to(y.dtype)


@dataclass
class _Layer:
    norm_attention: torch.Tensor
    eps_attention: float
    qkv: _Projection
    out: _Projection
    norm_mlp: torch.Tensor
    eps_mlp: float
    gate_up: _Projection
    down: _Projection


def language_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (its layers carry the adapters), or ``model`` itself."""
    if type(model).__name__.startswith("PeftModel") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _linear_parts(module: nn.Module) -> tuple | str:
    """``(weight, bias, A, B, scaling)`` of a plain linear layer (no adapter: A, B, scaling None) or of a peft LoRA
    layer with one plain adapter active; else why not."""
    if type(module) is nn.Linear:
        return module.weight, module.bias, None, None, None
    if not (hasattr(module, "base_layer") and hasattr(module, "lora_A")):
        return f"{type(module).__name__} is neither a torch.nn.Linear nor a LoRA layer (a quantised layer?)"
    if type(module.base_layer) is not nn.Linear:
        return f"the LoRA layer wraps a {type(module.base_layer).__name__}, not a torch.nn.Linear"
    if module.disable_adapters or module.merged:
        return "adapters are disabled or merged"
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) > 1:
        return "more than one LoRA adapter is active"
    base = module.base_layer
    if not active:
        return base.weight, base.bias, None, None, None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(name):
        return "a LoRA variant (DoRA, ...) or an adapter bias"
    dropout = module.lora_dropout[name]
    if module.training and type(dropout) is not nn.Identity and dropout.p > 0:
        return "LoRA dropout is on (the model is in training mode)"
    return base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]


def _projection(modules: list[nn.Module]) -> _Projection:
    """These parallel layers (q, k, v; gate, up; or one) fused into one projection, adapters included."""
    parts = [_linear_parts(m) for m in modules]
    weight = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    biases = [p[1] for p in parts]
    bias = None
    if any(b is not None for b in biases):  # a layer without a bias adds zeros to the fused one
        bias = torch.cat([b if b is not None else p[0].new_zeros(p[0].shape[0]) for b, p in zip(biases, parts)])
    adapted = [(i, p) for i, p in enumerate(parts) if p[2] is not None]
    if not adapted:
        return _Projection(weight, bias)
    down = torch.cat([p[2] for _, p in adapted])
    dtype = down.dtype
    up = torch.zeros(weight.shape[0], down.shape[0], dtype=dtype, device=down.device)
    rows = [0]
    for p in parts:
        rows.append(rows[-1] + p[0].shape[0])
    column = 0
    for i, (_, _, a, b, scaling) in adapted:
        up[rows[i] : rows[i + 1], column : column + a.shape[0]] = b.to(dtype) * scaling
        column += a.shape[0]
    return _Projection(weight, bias, down, up)


def unsupported_reason(model: nn.Module, length: int) -> str | None:
    """Why the compact pass cannot run ``model`` (a transformers model, or one wrapped by peft with LoRA adapters)
    for sequences of ``length`` tokens, or None if it can."""
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return f"{type(module).__name__} has forward hooks (offloading, a user's hook), which this pass would skip"
    model = language_model(model)
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not one of {sorted(SUPPORTED)}"
    config = model.config
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} is not one of {sorted(STATIC_ROPE)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not 'silu'"
    if getattr(config, "attention_dropout", 0.0) and model.training:
        return "attention dropout is on (the model is in training mode)"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp is not 1"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return "some layers use sliding-window attention"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < length:
        return f"sliding_window {window} is shorter than the sequences ({length} tokens)"
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        linears = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj]
        for module in [*linears, mlp.gate_proj, mlp.up_proj, mlp.down_proj]:
            parts = _linear_parts(module)
            if isinstance(parts, str):
                return parts
    if type(model.lm_head) is not nn.Linear or type(model.model.embed_tokens) is not nn.Embedding:
        return "the embedding or the LM head is not a plain torch module (an adapter on it?)"
    return None


class CompactDecoder:
    """Prefill and one-token decoding steps of one model, over a preallocated KV cache for ``rows`` sequences.

    Check the model with :func:`unsupported_reason` first; call :meth:`refresh` after the weights change, then
    per batch :meth:`prefill` and :meth:`step`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # as given (a peft wrapper, say); the layers are read from the model inside
        self.net = language_model(model)
        config = self.net.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.dtype = self.net.model.embed_tokens.weight.dtype
        self.layers: list[_Layer] = []
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read the weights (fused copies of q/k/v and gate/up, and of the adapters; the rest by reference)."""
        self.layers = []
        for layer in self.net.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    norm_attention=layer.input_layernorm.weight,
                    eps_attention=layer.input_layernorm.variance_epsilon,
                    qkv=_projection([a.q_proj, a.k_proj, a.v_proj]),
                    out=_projection([a.o_proj]),
                    norm_mlp=layer.post_attention_layernorm.weight,
                    eps_mlp=layer.post_attention_layernorm.variance_epsilon,
                    gate_up=_projection([m.gate_proj, m.up_proj]),
                    down=_projection([m.down_proj]),
                )
            )

    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeat: int, new_tokens: int
    ) -> torch.Tensor:
        """Run the left-padded prompts ``[P, W]`` and return their last position's logits ``[P, V]`` (float32).
        The cache then holds each prompt's keys and values ``repeat`` times (rows ``p·repeat … p·repeat+repeat−1``),
        with room for ``new_tokens`` more positions."""
        p, width = input_ids.shape
        device, dtype = input_ids.device, self.dtype
        self.width, self.rows = width, p * repeat
        total = width + new_tokens
        positions = torch.arange(total, device=device)
        hidden = torch.empty(1, 1, dtype=dtype, device=device)
        cos, sin = self.net.model.rotary_emb(hidden, positions[None])  # [1, total, D], the model's own rope
        self.cos, self.sin = cos[0], sin[0]
        prompt_positions = (attention_mask.cumsum(1) - 1).clamp_min(0)
        self.next_position = (attention_mask.sum(1, keepdim=True)).repeat_interleave(repeat, 0)  # [N, 1]
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # a padding position attends to itself, so no query row is fully masked (which would give NaN keys/values)
        mask = (causal & attention_mask.bool()[:, None, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
        shape = (self.rows, self.kv_heads, total, self.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        self.key_mask = torch.ones(self.rows, 1, 1, total, dtype=torch.bool, device=device)
        self.key_mask[..., :width] = attention_mask.bool().repeat_interleave(repeat, 0)[:, None, None, :]
        x = self.net.model.embed_tokens(input_ids)
        rope = self.cos[prompt_positions][:, None], self.sin[prompt_positions][:, None]  # [P, 1, W, D]
        for i, layer in enumerate(self.layers):
            x = self._layer(x, layer, rope, mask, i, slice(0, width), repeat)
        return self._logits(x[:, -1:])[:, 0]

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with only these rows of the cache (indices into the current rows, in the order given): rows that
        have finished cost nothing more; a copy of the kept rows' cache."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.key_mask = self.key_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        self.rows = rows.numel()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Feed the ``t``-th new token of every current row (``[rows]``) and return the next position's logits
        ``[rows, V]``."""
        slot = self.width + t
        positions = self.next_position + t  # [N, 1]
        rope = self.cos[positions][:, None], self.sin[positions][:, None]  # [N, 1, 1, D]
        mask = self.key_mask[..., : slot + 1]
        x = self.net.model.embed_tokens(tokens[:, None])
        for i, layer in enumerate(self.layers):
            x = self._layer(x, layer, rope, mask, i, slice(slot, slot + 1), 0)
        return self._logits(x)[:, 0]

    def _layer(self, x, layer: _Layer, rope, mask, index: int, slots: slice, repeat: int) -> torch.Tensor:
        """One decoder layer. In the prefill (``repeat`` > 0) the prompts attend to their own keys, which go into
        the cache ``repeat`` times; in a decoding step (``repeat`` = 0) the new token attends to the cache."""
        n, length, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        normed = F.rms_norm(x, (x.shape[-1],), layer.norm_attention, layer.eps_attention)
        qkv = layer.qkv(normed).view(n, length, h + 2 * kv, d).transpose(1, 2)
        cos, sin = rope
        half = d // 2
        qk = qkv[:, : h + kv]
        qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
        q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + kv :]
        keys, values = self.keys[index], self.values[index]
        if repeat:
            keys[:, :, slots] = k.repeat_interleave(repeat, 0)
            values[:, :, slots] = v.repeat_interleave(repeat, 0)
        else:
            keys[:, :, slots] = k
            values[:, :, slots] = v
            k, v = keys[:, :, : slots.stop], values[:, :, : slots.stop]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != h)
        x = x + layer.out(attended.transpose(1, 2).reshape(n, length, h * d))
        normed = F.rms_norm(x, (x.shape[-1],), layer.norm_mlp, layer.eps_mlp)
        gate, up = layer.gate_up(normed).chunk(2, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.net.model.norm
        return self.net.lm_head(F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)).float()


def disagreement(
    decoder: CompactDecoder, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> str | None:
    """None when the compact decoder's last-position logits for these prompts match the model's own forward pass
    (to float32 rounding, or to half-precision rounding for bfloat16/float16 weights); else the difference."""
    with torch.no_grad():
        positions = (prompt_mask.cumsum(1) - 1).clamp_min(0)
        reference = (
            model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, logits_to_keep=1)
            .logits[:, -1]
            .float()
        )
        compact = decoder.prefill(prompt_ids, prompt_mask, 1, 1)
    scale = 1.0 + float(reference.abs().max())
    tolerance = (1e-4 if decoder.dtype == torch.float32 else 5e-2) * scale
    difference = float((compact - reference).abs().max())
    if difference <= tolerance:
        return None
    return f"logits differ from the model's own forward by {difference:.3g} (tolerance {tolerance:.3g})"
