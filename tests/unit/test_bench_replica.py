"""The random-weight replica: config parses, tokenizer loads with transformers, special ids are right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocr_stream.bench.replica import ANCHORS, VOCAB_SIZE, build_replica

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_replica(tmp_path_factory.mktemp("replica") / "deepseek-ocr")


def test_config_is_the_published_architecture(replica: Path) -> None:
    cfg = json.loads((replica / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekOCRForCausalLM"]
    lang = cfg["language_config"]
    assert lang["vocab_size"] == VOCAB_SIZE
    assert (lang["num_hidden_layers"], lang["hidden_size"], lang["n_routed_experts"]) == (12, 1280, 64)


def test_tokenizer_loads_with_transformers_and_has_the_anchor_ids(replica: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(replica))
    assert len(tok) == VOCAB_SIZE
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    for token, tid in ANCHORS.items():
        assert tok.convert_tokens_to_ids(token) == tid, token
        assert tok.encode(token, add_special_tokens=False) == [tid], token
    # The processor looks the image token up in the vocabulary.
    assert tok.vocab.get("<image>") == 128815
    ids = tok.encode("<image>\n<|grounding|>Convert the document to markdown.", add_special_tokens=False)
    assert ids[0] == 128815 and 128820 in ids
    assert tok.decode(ids) == "<image>\n<|grounding|>Convert the document to markdown."
    # Random weights emit any id: every id must decode.
    assert isinstance(tok.decode([VOCAB_SIZE - 1, 5000, 128821]), str)


def test_chat_template_puts_the_image_placeholder_where_the_image_part_is(replica: Path) -> None:
    """What ocr-stream sends: an image part, then the prompt text without a placeholder."""
    tok = transformers.AutoTokenizer.from_pretrained(str(replica))
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                                         {"type": "text", "text": "<|grounding|>Convert the document to markdown."}]}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<image>\n<|grounding|>Convert the document to markdown."
    plain = [{"role": "user", "content": "<image>\nFree OCR."}]
    assert tok.apply_chat_template(plain, tokenize=False) == "<image>\nFree OCR."


def test_refuses_to_overwrite(replica: Path) -> None:
    with pytest.raises(FileExistsError):
        build_replica(replica)
