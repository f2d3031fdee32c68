import json

import pytest
from omegaconf import OmegaConf

from cispo import arithmetic
from cispo.config import DataConfig
from cispo.data import DataError, PromptStream, load_rows, validate
from cispo.models.tokenizer import build_char_tokenizer


def test_jsonl_rows_are_validated_and_bad_ones_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    good = arithmetic.rows(5)
    with open(path, "w") as f:
        for r in good:
            f.write(json.dumps(r) + "\n")
        f.write(json.dumps({"prompt": "", "reference": "1"}) + "\n")
        f.write(json.dumps({"prompt": "1+1=", "reference": None}) + "\n")
    cfg = OmegaConf.structured(DataConfig(source=str(path)))
    prompts, skipped = validate(load_rows(cfg), cfg, build_char_tokenizer())
    assert len(prompts) == 5 and sum(skipped.values()) == 2
    assert prompts[0].text == good[0]["prompt"] and prompts[0].data_source == "arithmetic"
    assert prompts[0].token_ids[0] == build_char_tokenizer().bos_token_id


def test_missing_file_and_no_usable_rows(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(OmegaConf.structured(DataConfig(source=str(tmp_path / "x.jsonl"))))
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "1+1"}) + "\n")
    cfg = OmegaConf.structured(DataConfig(source=str(path)))
    with pytest.raises(DataError, match="no usable rows"):
        validate(load_rows(cfg), cfg, build_char_tokenizer())


def test_prompt_stream_resumes_exactly():
    cfg = OmegaConf.structured(DataConfig(arithmetic_rows=7))
    prompts, _ = validate(load_rows(cfg), cfg, build_char_tokenizer())
    a = PromptStream(prompts, seed=3)
    a.next_batch(5)
    state = a.state()
    expected = [p.text for p in a.next_batch(9)]  # crosses an epoch boundary
    b = PromptStream(prompts, seed=3)
    b.load_state(state)
    assert [p.text for p in b.next_batch(9)] == expected
