"""A sequence-classification model as a reward: tiny random Llama and BERT heads saved to a temporary directory.

Each check compares :class:`RewardModel` with calling the model directly, one input at a time, the way its
model card would: the batching, padding, chat template and device placement must not change a score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from morl.components import build
from morl.pipeline import Pipeline, TrainConfig
from morl.rewards import PlacedOnDevice, RewardModel, objective_name, score_rewards
from morl.tinymath.task import make_split
from tests.pretend_device import pretend_accelerator

PROMPTS = ["1 + 2 = ", "Say hi: ", "x", "A longer prompt about 7 * 6, which is "]
COMPLETIONS = ["3", "hello there, friend", "yz", "42"]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"


def _save_llama(path: Path, num_labels: int, chat_template: str | None = None) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from morl.tinymath.tokenizer import build_tokenizer

    tok = build_tokenizer()
    if chat_template:
        tok.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_rm(tmp_path_factory) -> Path:
    """A one-logit reward head on a random ~10k-parameter Llama, with the TinyMath tokenizer."""
    return _save_llama(tmp_path_factory.mktemp("llama-rm"), num_labels=1)


@pytest.fixture(scope="module")
def bert_rm(tmp_path_factory) -> Path:
    """A three-label BERT classifier: absolute positions, [CLS]/[SEP], dropout (so eval mode matters)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("bert-rm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789+=*:,."]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=64)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.5,
        attention_probs_dropout_prob=0.5,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _direct(path: Path, texts: list[str], **tokenizer_options: Any) -> torch.Tensor:
    """Logits of each text alone (no padding anywhere), the model in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([model(**tok(t, return_tensors="pt", **tokenizer_options)).logits for t in texts])


def test_llama_head_scores_prompt_plus_completion_as_the_model_does(llama_rm):
    rm = RewardModel(model=str(llama_rm), batch_size=3)  # batches of 3 and 1, padded on the right
    expected = _direct(llama_rm, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])[:, 0]
    assert rm(prompts=PROMPTS, completions=COMPLETIONS) == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(expected.tolist())) == len(PROMPTS)  # the inputs tell the scores apart


def test_bert_head_gets_its_special_tokens_eval_mode_and_the_chosen_label(bert_rm):
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    logits = _direct(bert_rm, texts)  # [CLS] ... [SEP], as the tokenizer adds by default
    rm = RewardModel(model=str(bert_rm), label=2, batch_size=2)
    first = rm(PROMPTS, COMPLETIONS)
    assert first == pytest.approx(logits[:, 2].tolist(), abs=1e-5)
    assert rm(PROMPTS, COMPLETIONS) == first  # dropout is off: eval mode
    model = rm._model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    probs = RewardModel(model=str(bert_rm), label=1, output="softmax")(PROMPTS, COMPLETIONS)
    assert probs == pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    sigmoid = RewardModel(model=str(bert_rm), output="sigmoid")(PROMPTS, COMPLETIONS)
    assert sigmoid == pytest.approx(logits[:, 0].sigmoid().tolist(), abs=1e-5)


def test_a_label_the_head_does_not_have_is_an_error(bert_rm):
    with pytest.raises(ValueError, match=r"label=3, but .* has 3 output logit"):
        RewardModel(model=str(bert_rm), label=3)(["a"], ["b"])


def test_max_length_cuts_long_inputs(bert_rm):
    long_prompt = "a " * 200  # longer than the 64 positions: the tokenizer's model_max_length cuts it
    rm = RewardModel(model=str(bert_rm))
    assert rm([long_prompt], ["b"]) == pytest.approx(_direct(bert_rm, [long_prompt + "b"], truncation=True)[:, 0])
    short = RewardModel(model=str(bert_rm), max_length=8)([long_prompt], ["b"])
    assert short == pytest.approx(_direct(bert_rm, [long_prompt + "b"], truncation=True, max_length=8)[:, 0])


def test_chat_data_goes_through_the_reward_models_chat_template(tmp_path):
    path = _save_llama(tmp_path / "chat-rm", num_labels=1, chat_template=TEMPLATE)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    texts = [
        tok.apply_chat_template([*m, {"role": "assistant", "content": c}], tokenize=False)
        for m, c in zip(chats, COMPLETIONS)
    ]
    assert texts[0] == "<system>Be brief.\n<user>1 + 2 = \n<assistant>3\n"
    expected = _direct(path, texts, add_special_tokens=False)[:, 0]
    # through morl, as the pipeline calls it: rows with chat ``messages``
    rm = RewardModel(model=str(path), batch_size=3)
    matrix, _ = score_rewards([rm], PROMPTS, COMPLETIONS, {"messages": chats}, training=False)
    assert matrix[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    # plain-text rows of the same model: prompt + completion, no template
    plain = _direct(path, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])[:, 0]
    assert rm(PROMPTS, COMPLETIONS) == pytest.approx(plain.tolist(), abs=1e-5)


def test_a_conversation_without_a_chat_template_is_scored_as_text(llama_rm):
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    expected = _direct(llama_rm, [p + "\n" + c for p, c in zip(PROMPTS, COMPLETIONS)])[:, 0]
    assert RewardModel(model=str(llama_rm))(chats, completions) == pytest.approx(expected.tolist(), abs=1e-5)


def test_registered_named_like_trl_and_placed_by_device(llama_rm):
    rm = build("reward", {"name": "reward_model", "model": str(llama_rm), "batch_size": 4})
    assert isinstance(rm, RewardModel) and isinstance(rm, PlacedOnDevice)
    assert objective_name(rm) == llama_rm.name  # the model's last path component, as TRL logs it
    assert objective_name(RewardModel(model="org/helpful-rm")) == "helpful-rm"
    assert objective_name(RewardModel(model=str(llama_rm), objective="helpfulness")) == "helpfulness"
    assert repr(rm).startswith(f"RewardModel(call_timeout_s=None, model={str(llama_rm)!r}, label=0, ")
    assert rm.state_dict() == {} and rm.clone().get_params() == rm.get_params()
    assert rm._device() == torch.device("cpu")  # auto, alone: the CPU
    rm.place("meta")
    assert rm._device() == torch.device("meta")  # auto: where the pipeline says the policy is
    pinned = RewardModel(model=str(llama_rm), device="cpu")
    pinned.place("meta")
    assert pinned._device() == torch.device("cpu")  # its own device wins


def test_placed_on_the_policys_accelerator_it_scores_there(llama_rm):
    expected = RewardModel(model=str(llama_rm))(PROMPTS, COMPLETIONS)
    with pretend_accelerator() as acc:
        rm = RewardModel(model=str(llama_rm), batch_size=2)
        rm(PROMPTS[:1], COMPLETIONS[:1])  # loaded on the CPU first, then moved: both orders must work
        rm.place(acc.device)
        assert acc.is_marked(next(rm._model.parameters()))
        assert rm(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
        late = RewardModel(model=str(llama_rm))
        late.place(acc.device)  # placed before it loads
        assert late(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
        assert acc.is_marked(next(late._model.parameters()))


def test_pipeline_trains_on_a_reward_model(tiny_policy, tmp_path, llama_rm):
    config = TrainConfig(steps=1, prompts_per_step=2, group_size=3, output_dir=str(tmp_path / "run"), progress=False)
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=["clarity", {"name": "reward_model", "model": str(llama_rm)}],
        config=config,
        rollout={"name": "transformers", "max_new_tokens": 10},
    )
    record, metrics = pipe.step(make_split("train", 2, 0))
    rollout = record.rollout
    expected = _direct(llama_rm, [p + c for p, c in zip(rollout.prompts, rollout.completions)])[:, 0]
    assert record.rewards[:, 1].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert f"rewards/{llama_rm.name}/mean" in metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_cuda_gpu_it_scores_as_on_the_cpu(llama_rm, bert_rm):
    for path in (llama_rm, bert_rm):
        expected = RewardModel(model=str(path), device="cpu")(PROMPTS, COMPLETIONS)
        placed = RewardModel(model=str(path), batch_size=3)
        placed.place(torch.device("cuda", torch.cuda.current_device()))  # what the pipeline does for a GPU policy
        assert placed(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-4)
        assert next(placed._model.parameters()).is_cuda
        half = RewardModel(model=str(path), device="cuda", dtype="bfloat16")
        assert half(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=0.05)  # bf16 weights, float32 scores
        assert next(half._model.parameters()).dtype == torch.bfloat16
