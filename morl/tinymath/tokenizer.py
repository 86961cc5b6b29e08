"""A character-level tokenizer for TinyMath, wrapped as a ``transformers`` fast tokenizer.

One token per character keeps the model tiny and the token length of a completion equal to its character
count, which makes the conciseness reward easy to reason about. The vocabulary is printable ASCII plus
newline, so every prompt and ``\\boxed{}`` solution round-trips exactly; anything else becomes ``<unk>``.

Example:
    >>> tok = build_tokenizer()
    >>> ids = tok("1. 2+3=5\\n\\\\boxed{5}")["input_ids"]
    >>> tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True)
    '1. 2+3=5\\n\\\\boxed{5}'
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, EOS, UNK]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, then one id per character.

    No BOS is added (like Qwen), so ``tokenizer(text)`` gives exactly one id per character.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character, newline included, is its own pre-token; Fuse joins them back without spaces.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """``save_pretrained``, naming the class ``PreTrainedTokenizerFast`` so transformers 4.x loads it too.

    transformers 5 records its own class name (``TokenizersBackend``), which 4.x does not know.
    """
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
