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


def test_malformed_lines_are_named_by_file_and_1_based_line(tmp_path, caplog):
    """Issue 21: a bad line gave two pyarrow tracebacks naming neither; row numbers began at 0."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1+1=", "reference": "2"}\n'
                    '{"prompt": "1+2=", "reference": "3"\n'      # line 2: cut short
                    'not json\n'                                  # line 3
                    '\n'                                          # a blank line is not a row
                    '[1, 2]\n'                                    # line 5: not an object
                    '{"prompt": "", "reference": "1"}\n'          # line 6: empty prompt
                    '{"prompt": "2+2=", "reference": 4}\n')       # a number where others have str
    cfg = OmegaConf.structured(DataConfig(source=str(path)))
    with caplog.at_level("WARNING", logger="cispo.data"):
        prompts, skipped = validate(load_rows(cfg), cfg, build_char_tokenizer())
    assert [p.text for p in prompts] == ["1+1=", "2+2="] and sum(skipped.values()) == 4
    text = caplog.text
    for line, why in ((2, "not JSON"), (3, "not JSON"), (5, "not a JSON object"), (6, "missing or empty")):
        assert f"skipping data row {path}:{line}: {why}" in text
    assert f"not JSON: {path}:2-3" in text and "skipped 4 of 6 data rows" in text


def test_every_skipped_row_is_in_the_summary_and_other_sources_count_from_1(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "", "reference": "1"}) + "\n" for _ in range(9))
                    + json.dumps({"prompt": "1+1=", "reference": "2"}) + "\n")
    cfg = OmegaConf.structured(DataConfig(source=str(path)))
    with caplog.at_level("WARNING", logger="cispo.data"):
        validate(load_rows(cfg), cfg, build_char_tokenizer())
    assert f"{path}:1-9" in caplog.text  # all nine, though only the first few one by one
    rows = [{"prompt": "", "reference": "1"}, {"prompt": "1+1=", "reference": "2"}]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cispo.data"):
        validate(rows, OmegaConf.structured(DataConfig(source="hub/name")), build_char_tokenizer())
    assert "skipping data row hub/name row 1:" in caplog.text


def test_a_json_array_file_with_a_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "1+1=", "reference": "2"},\n  {"prompt": oops}\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        load_rows(OmegaConf.structured(DataConfig(source=str(path))))
    path.write_text(json.dumps([{"prompt": "1+1=", "reference": "2"}, 3]))
    rows = load_rows(OmegaConf.structured(DataConfig(source=str(path))))
    assert list(rows) == [{"prompt": "1+1=", "reference": "2"}] and rows.bad == [(f"{path} item 2", "not a JSON object")]
