"""Build a tiny, randomly initialised Qwen3 checkpoint on disk, with a real tokenizer.

Model weights cannot be downloaded where nbchat's tests run, yet the local
backend must be tested through the very ``from_pretrained`` path that loads
``Qwen/Qwen3-1.7B`` on a user's machine. ``tiny_qwen3`` writes what such a
checkpoint directory holds — ``config.json`` and safetensors weights of the
real ``Qwen3ForCausalLM`` architecture, ``generation_config.json``, and
``tokenizer.json``/``tokenizer_config.json`` with Qwen3's chat template — only
small and random. Its answers are gibberish, but every code path (chat
template, thinking switch, streaming, eos, sampling, context limit) is real.

The tokenizer is a byte-level BPE trained here on a few paragraphs of English
(Qwen's own pre-tokenizer regex and byte-level alphabet, so any text
round-trips). Qwen's special tokens cannot keep their ids (151643…) in a
vocabulary of a few hundred entries, so they keep their strings and roles:
``<|endoftext|>`` (pad), ``<|im_start|>`` and ``<|im_end|>`` (eos) are special,
``<think>``/``</think>`` are added but NOT special, exactly as in Qwen3, so
``skip_special_tokens=True`` leaves them in a decoded stream as literal text.

Building is deterministic for a given ``seed`` and size. The default size
builds in well under a second (after the imports); ``hidden_size=1024,
num_layers=8`` gives a checkpoint of about 400 MB for benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "THINK_TOKENS", "tiny_qwen3"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")

# Qwen2/Qwen3's pre-tokenizer split (contractions, letters, single digits, punctuation, spaces).
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's chat template (from Qwen/Qwen3-1.7B's tokenizer_config.json), without the tool-calling
# branches nbchat never uses: past assistant turns lose their thinking, and
# ``enable_thinking=False`` pre-fills an empty think block so the model answers directly.
CHAT_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and message.content is string %}
        {%- set ns.last_query_index = index %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""  # noqa: E501 - a template line is kept whole, as Qwen ships it

# A few paragraphs of plain English: enough for a BPE to learn common words, nothing more.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. To be or not to be, that is the question. All that glitters is not gold.",
    "Hello! How are you today? I am fine, thank you. What would you like to talk about? "
    "Let me think about it for a moment. I think the answer is forty-two.",
    "Notebooks let people mix code, text and results. A kernel runs the code; a chat panel "
    "sends messages to a model and streams the reply back, one token after another.",
    "Water boils at 100 degrees Celsius at sea level. The Earth goes around the Sun once a "
    "year. There are 7 days in a week, 12 months in a year, and 24 hours in a day.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5\n",
    "Please answer briefly. Sure, here is a short answer: yes. No, that is not right. "
    "Maybe we should try again? First, second, third; then the last one.",
    "She said: \"It's a lovely day, isn't it?\" He replied: 'We'll see, I'd rather wait.' "
    "They're here, you've seen them, and I'm glad.",
)


def tiny_qwen3(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_extra: int = 256,
    max_position_embeddings: int = 2048,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a random ``Qwen3ForCausalLM`` checkpoint with a real tokenizer to ``path``; return it.

    ``vocab_extra`` is the number of BPE merges learned on top of the 256 byte
    symbols. ``vocab_size`` pads the model's embedding beyond the tokenizer
    (Qwen3 has 151,936 rows for 151,669 tokens): the padded rows cost what
    Qwen's do, for benchmarks. ``hidden_size`` and ``num_layers`` set the size: parameters grow as
    about ``12 * hidden_size**2 * num_layers`` (the MLP is 3x wide, as in
    Qwen3; attention uses grouped key/value heads). The directory loads with
    ``AutoTokenizer.from_pretrained(path)`` and
    ``AutoModelForCausalLM.from_pretrained(path)``.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if hidden_size < 16 or hidden_size % 16:
        raise ValueError(f"hidden_size must be a multiple of 16 of at least 16, not {hidden_size}.")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(vocab_extra)
    tokenizer.save_pretrained(out)
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int), token  # one token in, one id out
        ids[token] = found

    head_dim = 64 if hidden_size >= 512 else max(8, hidden_size // 4)
    heads = hidden_size // head_dim
    config = Qwen3Config(
        vocab_size=max(len(tokenizer), vocab_size or 0),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,  # as in Qwen3-0.6B and -1.7B
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen3ForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)  # building must not disturb the caller's RNG
    # What Qwen/Qwen3-1.7B ships: stop on either end token, Qwen's thinking-mode sampling.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
    )
    model.save_pretrained(out)
    return out


def _build_tokenizer(vocab_extra: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with Qwen's pre-tokenizer, then add Qwen's special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    if vocab_extra < 0:
        raise ValueError(f"vocab_extra must be at least 0, not {vocab_extra}.")
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    alphabet = pre.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=len(alphabet) + vocab_extra,
        initial_alphabet=alphabet,
        min_frequency=1,
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",  # noqa: S106 - a token, not a password
        pad_token="<|endoftext|>",  # noqa: S106
        chat_template=CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )


def describe(path: str | Path) -> dict[str, object]:
    """What a checkpoint directory holds (for benchmarks' printouts): parameters, bytes on disk."""
    root = Path(path)
    config = json.loads((root / "config.json").read_text())
    weights = sum(p.stat().st_size for p in root.glob("*.safetensors"))
    return {
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
        "weights_mb": round(weights / 2**20, 1),
    }
