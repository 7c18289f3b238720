"""A random-weight replica of DeepSeek-OCR for throughput measurements without the real weights.

    ocr-stream bench replica OUT_DIR
    vllm serve OUT_DIR --load-format dummy --served-model-name deepseek-ai/DeepSeek-OCR ...

The directory holds the model's published config (same architecture, so the same compute and
memory traffic) and a tokenizer built with the ``tokenizers`` library: the same vocabulary size
(129,280) and the token ids that vLLM's DeepSeek-OCR processor and our requests depend on
(bos 0, eos 1, pad 2, ``<image>`` 128815, the grounding tags, ``<td>``/``</td>`` 128821/128822 that
the n-gram processor whitelists). Its text is meaningless: measure with a fixed number of output
tokens per page (``ignore_eos`` and ``max_tokens``), never quality.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

VOCAB_SIZE = 129_280

# Ids the runtime and the prompts depend on (DeepSeek-OCR's tokenizer).
ANCHORS: dict[str, int] = {
    "<｜begin▁of▁sentence｜>": 0,
    "<｜end▁of▁sentence｜>": 1,
    "<｜▁pad▁｜>": 2,
    "<image>": 128815,
    "<|ref|>": 128816,
    "<|/ref|>": 128817,
    "<|det|>": 128818,
    "<|/det|>": 128819,
    "<|grounding|>": 128820,
    "<td>": 128821,
    "</td>": 128822,
    "<tr>": 128823,
    "</tr>": 128824,
    "<|User|>": 128825,
    "<|Assistant|>": 128826,
}
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"

# A template that walks the content parts makes vLLM pass them as parts ("openai" content format),
# so the template itself must put DeepSeek-OCR's <image> placeholder where an image part is; without
# it vLLM 0.26 fails every request ("Failed to apply prompt replacement for mm_items['image'][0]").
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image_url', 'image', 'input_image') %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
)


def published_config() -> dict[str, object]:
    text = resources.files("ocr_stream.data").joinpath("deepseek-ocr-config.json").read_text()
    return dict(json.loads(text))


def build_tokenizer_json() -> str:
    """A byte-level BPE tokenizer whose vocabulary has exactly VOCAB_SIZE entries."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = dict(ANCHORS)
    taken = set(ANCHORS.values())
    next_id = 0

    def take(token: str) -> None:
        nonlocal next_id
        while next_id in taken:
            next_id += 1
        vocab[token] = next_id
        taken.add(next_id)

    for ch in sorted(alphabet):
        take(ch)
    filler = 0
    while len(vocab) < VOCAB_SIZE:
        take(f"Ġw{filler}")  # reachable by decoding only: random weights emit any id
        filler += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ANCHORS if t not in (BOS, EOS, PAD)])
    return str(tok.to_str())


def build_replica(out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write config.json, tokenizer.json, tokenizer_config.json and friends into ``out_dir``."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty (use --overwrite)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = published_config()
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out_dir / "tokenizer.json").write_text(build_tokenizer_json())
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }, indent=1, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, ensure_ascii=False) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}) + "\n")
    (out_dir / "README.md").write_text(
        "Random-weight replica of deepseek-ai/DeepSeek-OCR built by `ocr-stream bench replica`.\n"
        "Serve with `vllm serve . --load-format dummy`; measure throughput only (ignore_eos + max_tokens).\n"
    )
    return out_dir
