"""The compact forward pass against the model's own forward: same logits in the prefill and at every decoding step."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from morl.compact import CompactDecoder, disagreement, unsupported_reason

SMALL = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    max_position_embeddings=128,
    pad_token_id=0,
)


def build(kind: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SMALL, **extra))
    elif kind == "llama3-rope":
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0}
        rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        model = LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters=rope, **extra))
    elif kind == "qwen2":  # biases on q, k and v
        model = Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True, **extra))
    else:
        model = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None, **extra))
    return model.eval()


def left_padded(lengths: list[int], vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return ids.masked_fill(mask == 0, 0), mask


def reference_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's own forward over whole sequences: the last position's logits."""
    with torch.no_grad():
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()


@pytest.mark.parametrize("kind", ["llama", "llama3-rope", "qwen2", "mistral"])
def test_prefill_and_every_step_match_the_models_forward(kind):
    model = build(kind)
    assert unsupported_reason(model, 64) is None
    torch.manual_seed(1)
    ids, mask = left_padded([7, 3, 5])
    repeat, steps = 2, 6
    decoder = CompactDecoder(model)
    logits = decoder.prefill(ids, mask, repeat, steps)
    torch.testing.assert_close(logits, reference_logits(model, ids, mask), atol=1e-5, rtol=1e-5)
    rows_ids, rows_mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
    for t in range(steps):
        tokens = torch.randint(1, 50, (rows_ids.shape[0],))  # a different token in each copy of a prompt
        rows_ids = torch.cat([rows_ids, tokens[:, None]], 1)
        rows_mask = torch.cat([rows_mask, torch.ones_like(tokens)[:, None]], 1)
        step = decoder.step(tokens, t)
        torch.testing.assert_close(step, reference_logits(model, rows_ids, rows_mask), atol=1e-5, rtol=1e-5)


def test_a_bias_on_some_of_the_fused_projections():
    model = build("llama")
    q = model.model.layers[0].self_attn.q_proj
    q.bias = torch.nn.Parameter(torch.randn(q.out_features))  # k and v keep none
    ids, mask = left_padded([5, 3])
    decoder = CompactDecoder(model)
    torch.testing.assert_close(decoder.prefill(ids, mask, 1, 1), reference_logits(model, ids, mask), atol=1e-5, rtol=0)


def test_refresh_follows_changed_weights():
    model = build("llama")
    ids, mask = left_padded([4, 6])
    decoder = CompactDecoder(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = decoder.prefill(ids, mask, 1, 1)
    decoder.refresh()
    fresh = decoder.prefill(ids, mask, 1, 1)
    expected = reference_logits(model, ids, mask)
    assert not torch.allclose(stale, expected, atol=1e-4)  # the fused q/k/v and gate/up copies were stale
    torch.testing.assert_close(fresh, expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_matches_within_half_precision():
    model = build("qwen2").to(torch.bfloat16)
    ids, mask = left_padded([5, 8])
    decoder = CompactDecoder(model)
    assert disagreement(decoder, model, ids, mask) is None


def test_disagreement_names_the_difference():
    ids, mask = left_padded([5, 8])
    other = build("llama")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    reason = disagreement(CompactDecoder(other), build("llama"), ids, mask)
    assert reason is not None and "differ from the model's own forward" in reason


def test_unsupported_models_say_why():
    torch.manual_seed(0)
    qwen3 = Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=8))
    assert "Qwen3ForCausalLM is not one of" in unsupported_reason(qwen3, 16)
    dynamic = build("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    assert "rope_type 'dynamic'" in unsupported_reason(dynamic, 16)
    windowed = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=8))
    assert unsupported_reason(windowed, 8) is None  # the window covers the sequences
    assert "sliding_window 8" in unsupported_reason(windowed, 9)
    hooked = build("llama")
    hooked.model.layers[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert "forward hooks" in unsupported_reason(hooked, 16)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "down_proj"], "all-linear"])
def test_lora_adapters_are_part_of_the_pass(targets):
    """peft's LoRA layers (some projections adapted, some not): the compact pass matches the wrapped model's forward,
    and follows the adapters when they change."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(build("qwen2"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0, where an adapter changes nothing
                p.normal_(0, 0.2)
    assert unsupported_reason(model, 32) is None
    ids, mask = left_padded([6, 4])
    decoder = CompactDecoder(model)
    torch.testing.assert_close(decoder.prefill(ids, mask, 1, 1), reference_logits(model, ids, mask), atol=1e-5, rtol=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.mul_(2.0)
    decoder.refresh()
    torch.testing.assert_close(decoder.prefill(ids, mask, 1, 1), reference_logits(model, ids, mask), atol=1e-5, rtol=0)
    with model.disable_adapter():
        assert "disabled" in unsupported_reason(model, 32)


def test_lora_variants_are_not_run():
    peft = pytest.importorskip("peft")
    dora = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert "variant" in unsupported_reason(dora, 16)


def test_other_linear_layers_and_merged_adapters_are_not_run():
    peft = pytest.importorskip("peft")

    class Quantised(torch.nn.Linear):  # stands in for a bitsandbytes or other replacement layer
        pass

    model = build("llama")
    old = model.model.layers[1].mlp.up_proj
    model.model.layers[1].mlp.up_proj = Quantised(old.in_features, old.out_features, bias=False)
    assert "Quantised is neither a torch.nn.Linear nor a LoRA layer" in unsupported_reason(model, 16)
    merged = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    merged.merge_adapter()
    assert "disabled or merged" in unsupported_reason(merged, 16)
