"""sft_data: reading, drop accounting, errors naming file and line, the cache, batching."""
import json

import numpy as np
import pytest
import torch

from smolsft.data import sft as sft_data
from smolsft.chat.format import IGNORE_TOKEN_ID


def chat(user, assistant, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"conversations": msgs}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(path, tokenizer, **kw):
    args = dict(max_length=kw.pop("max_length", 256), truncation="right", max_rounds=0, mask_mode="assistant")
    args.update(kw)
    return sft_data.build_features(str(path), tokenizer, **args)


def test_formats_and_field_names_read_alike(tmp_path, tokenizer):
    recs = [chat("Name a color.", "Blue."), chat("And a fruit?", "A pear.", system="Be brief.")]
    jl = write_jsonl(tmp_path / "a.jsonl", recs)
    js = tmp_path / "b.json"
    # ShareGPT turns under "messages" in a JSON list: the same conversations.
    js.write_text(json.dumps([{"messages": [{"from": m["role"].replace("user", "human").replace("assistant", "gpt"),
                                             "value": m["content"]} for m in r["conversations"]]} for r in recs]))
    a, sa = build(jl, tokenizer)
    b, sb = build(js, tokenizer)
    for k in ("input_ids", "labels", "offsets"):
        assert np.array_equal(a[k], b[k])
    assert sa["conversations_kept"] == 2 and sb["records_read"] == 2
    # A folder reads every file in it.
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "a.jsonl").write_text(jl.read_text())
    (folder / "b.json").write_text(js.read_text())
    c, sc = build(folder, tokenizer)
    assert sc["conversations_kept"] == 4 and len(c["offsets"]) == 5


def test_unpadded_features_are_the_masked_sample(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Hi there", "Hello! How can I help?")])
    arrays, stats = build(path, tokenizer)
    text = tokenizer.apply_chat_template(chat("Hi there", "Hello! How can I help?")["conversations"], tokenize=False)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert arrays["input_ids"].tolist() == expected
    # Trained tokens are exactly the assistant turn: header, content, <|im_end|>\n.
    trained = [t for t, l in zip(expected, arrays["labels"].tolist()) if l != IGNORE_TOKEN_ID]
    assert tokenizer.decode(trained) == "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    assert stats["tokens"] == len(expected) and stats["trained_tokens"] == len(trained)


def test_drops_are_counted_by_reason(tmp_path, tokenizer):
    recs = [
        chat("Keep me.", "Kept."),
        {"conversations": [{"role": "user", "content": "No answer."}]},  # empty after normalization
        {"conversations": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Late."}]},
        {"conversations": [{"role": "narrator", "content": "?"}, *chat("Q", "A")["conversations"]]},
    ]
    arrays, stats = build(write_jsonl(tmp_path / "d.jsonl", recs), tokenizer, max_length=64)
    assert stats["records_read"] == 4 and stats["conversations_kept"] == 2
    assert stats["dropped_empty_after_normalization"] == 1
    assert stats["dropped_no_trained_token_after_truncation"] == 1
    assert stats["turn_unknown_role"] == 1 and stats["turn_unpaired_user"] == 1
    line = sft_data.format_stats(stats)
    assert "dropped_no_trained_token_after_truncation=1" in line and "2 conversations kept" in line


def test_reverse_mode_trains_user_turns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Tell me a joke.", "No.")])
    arrays, _ = build(path, tokenizer, mask_mode="reverse")
    trained = [t for t, l in zip(arrays["input_ids"].tolist(), arrays["labels"].tolist()) if l != IGNORE_TOKEN_ID]
    assert tokenizer.decode(trained) == "<|im_start|>user\nTell me a joke.<|im_end|>\n"


@pytest.mark.parametrize("name,content,where", [
    ("bad.jsonl", '{"conversations": []}\n{"conversations": [\n', "bad.jsonl:2"),
    ("bad.json", '[\n {"conversations": []},\n {"conversations": [}\n]', "bad.json:3"),
])
def test_malformed_json_names_file_and_line(tmp_path, tokenizer, name, content, where):
    (tmp_path / name).write_text(content)
    with pytest.raises(sft_data.DataFormatError, match=rf"{where}: malformed JSON"):
        build(tmp_path / name, tokenizer)


def test_malformed_records_name_the_record(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), {"text": "no turns"}])
    with pytest.raises(sft_data.DataFormatError, match=r"d.jsonl:2: no 'conversations'"):
        build(path, tokenizer)
    path = write_jsonl(tmp_path / "l.jsonl", [chat("a", "b"), ["not", "an", "object"]])
    with pytest.raises(sft_data.DataFormatError, match=r"l.jsonl:2: expected an object with a 'conversations' list, got list"):
        build(path, tokenizer)
    path = write_jsonl(tmp_path / "e.jsonl", [{"conversations": [{"role": "user", "content": 5}]}])
    with pytest.raises(sft_data.DataFormatError, match=r"e.jsonl:1: turn 0: 'content' must be a string"):
        build(path, tokenizer)
    with pytest.raises(sft_data.DataFormatError, match="no such data file"):
        build(tmp_path / "missing.json", tokenizer)


def test_cache_hit_stale_and_corrupt(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("One?", "Two."), chat("Three?", "Four.")])
    cache = tmp_path / "cache"
    logs = []
    kw = dict(max_length=128, cache_dir=str(cache), log=logs.append)
    first, stats, key = sft_data.load_or_build(str(data), tokenizer, **kw)
    assert len(list(cache.glob("*.npz"))) == 1 and key["max_length"] == 128
    again, stats2, _ = sft_data.load_or_build(str(data), tokenizer, **kw)
    assert "loaded cached features" in logs[-1] and stats2 == stats
    assert all(np.array_equal(first[k], again[k]) for k in first)
    # Another max_length or mask mode is another key; so is changed data.
    sft_data.load_or_build(str(data), tokenizer, **{**kw, "max_length": 64})
    sft_data.load_or_build(str(data), tokenizer, mask_mode="reverse", **kw)
    write_jsonl(data, [chat("One?", "Two!")])
    _, stats3, key3 = sft_data.load_or_build(str(data), tokenizer, **kw)
    assert len(list(cache.glob("*.npz"))) == 4 and stats3["conversations_kept"] == 1
    # A corrupt file is rebuilt, with a message.
    path = next(p for p in cache.glob("*.npz") if _matches(p, key3))
    path.write_bytes(path.read_bytes()[:50])
    rebuilt, _, _ = sft_data.load_or_build(str(data), tokenizer, **kw)
    assert "stale or corrupt" in logs[-2] and "rebuilding" in logs[-2]
    assert rebuilt["offsets"].tolist()[-1] > 0


def test_cache_key_covers_every_library_module_the_masking_imports():
    """The feature cache key hashes the masking's code: every ``smolsft.chat`` module the
    course's masking files (and utils.py) import at module level (the tokenizer is
    fingerprinted apart; the checker CLI builds no feature), so moving code into a new
    module cannot leave stale caches valid."""
    import ast

    from smolsft.files import REPO_ROOT

    imported = set()
    for name in ("conversation_func.py", "reverse_conversation_func.py", "utils.py"):
        for node in ast.parse((REPO_ROOT / name).read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smolsft.chat."):
                imported.add(node.module.replace(".", "/") + ".py")
    imported.discard("smolsft/chat/tokenization.py")
    assert "smolsft/chat/spans.py" in imported
    assert imported <= set(sft_data._CODE_FILES)


def _matches(path, key):
    try:
        sft_data._read_cache(path, key)
        return True
    except ValueError:
        return False


def test_dataset_and_collator_pad_to_longest_multiple_of_8():
    arrays = {"input_ids": np.arange(1, 14, dtype=np.int32),
              "labels": np.array([-100, -100, 3, 4, 5, -100, 7, 8, -100, -100, 11, 12, 13], dtype=np.int32),
              "offsets": np.array([0, 5, 13], dtype=np.int64)}
    ds = sft_data.ConversationDataset(arrays)
    assert len(ds) == 2 and ds.lengths == [5, 8]
    assert ds[1]["input_ids"].tolist() == [6, 7, 8, 9, 10, 11, 12, 13]
    batch = sft_data.PadToLongestCollator(pad_id=0)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert batch["labels"][0].tolist() == [-100, -100, 3, 4, 5, -100, -100, -100]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert sft_data.PadToLongestCollator(0)([ds[0]])["input_ids"].shape == (1, 8)  # 5 -> 8
    nine = {"input_ids": torch.ones(9, dtype=torch.long), "labels": torch.ones(9, dtype=torch.long)}
    assert sft_data.PadToLongestCollator(0)([nine])["input_ids"].shape == (1, 16)
    # The benchmark's pad-to-max_length baseline: a multiple of max_length.
    assert sft_data.PadToLongestCollator(0, multiple=32)([ds[0]])["labels"].shape == (1, 32)


def test_collator_gives_the_library_collators_batches(tokenizer):
    """PadToLongestCollator is kept over transformers' DataCollatorForSeq2Seq only for
    speed (benchmarks/collator_speed.py) and the library's per-run tensor warning: the
    batches must be the same, on demo samples (int64 tensors) and list inputs."""
    from transformers import DataCollatorForSeq2Seq

    from smolsft.files import REPO_ROOT

    assert tokenizer.padding_side == "right"
    arrays, _ = sft_data.build_features(str(REPO_ROOT / "data" / "demo_sft.json"), tokenizer, 512, "right", 0,
                                        "assistant")
    ds = sft_data.ConversationDataset(arrays)
    ours = sft_data.PadToLongestCollator.for_tokenizer(tokenizer)
    lib = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=IGNORE_TOKEN_ID)
    as_lists = [{k: v.tolist() for k, v in ds[i].items()} for i in (3, 4)]
    # The library's warning on tensor labels is one reason ours is kept; if a release
    # drops it, this fails and the docstring's reason needs a look.
    with pytest.warns(UserWarning, match="list of numpy.ndarrays is extremely slow"):
        for samples in ([ds[i] for i in range(8)], [ds[i] for i in range(8, 13)], [ds[20]], as_lists):
            a, b = ours(samples), lib(samples)
            assert sorted(a) == sorted(b) == ["attention_mask", "input_ids", "labels"]
            for k in a:
                assert a[k].dtype == b[k].dtype == torch.long and torch.equal(a[k], b[k]), k


# ------------------------------------------- position 0 is never a target (issue 11)
@pytest.mark.parametrize("mask_mode", ["assistant", "reverse"])
@pytest.mark.parametrize("truncation", ["left", "right"])
def test_position_zero_is_never_a_target_on_the_demo_set(tokenizer, mask_mode, truncation):
    """Scan data/demo_sft.json: every training sample's first label is -100, the rest
    is the masking's output unchanged, the trained-token statistic counts exactly the
    shifted targets, and each collator's batch holds as many non-(-100) labels as
    shifted targets (what the Trainer counts as num_items_in_batch)."""
    from transformers import DataCollatorWithFlattening

    import train_hw_parallel
    from smolsft.chat.format import normalize_conversation
    from smolsft.files import REPO_ROOT

    data = REPO_ROOT / "data" / "demo_sft.json"
    records = json.loads(data.read_text())
    mask = sft_data.mask_function(mask_mode)
    for max_length in (64, 512):
        arrays, stats = sft_data.build_features(str(data), tokenizer, max_length, truncation, 0, mask_mode)
        ds = sft_data.ConversationDataset(arrays)
        # The masking's own windows, computed directly (golden-file checked Parts 1-4).
        keep_final_user = mask_mode == "reverse"  # reverse masking trains a chat's last user turn too
        intent = (lambda r: {"intent": r.get("intent")}) if mask_mode == "reverse" else (lambda r: {})
        masked = [mask(normalize_conversation(r["conversations"], keep_final_user=keep_final_user), tokenizer,
                       max_length, truncation, **intent(r)) for r in records]
        masked = [m for m in masked if m is not None and (m["labels"][1:] != IGNORE_TOKEN_ID).any()]
        assert len(ds) == len(masked) == stats["conversations_kept"]
        targets = 0
        for sample, m in zip(ds, masked):
            assert sample["labels"][0] == IGNORE_TOKEN_ID
            assert torch.equal(sample["input_ids"], m["input_ids"]) and torch.equal(sample["labels"][1:], m["labels"][1:])
            targets += int((m["labels"][1:] != IGNORE_TOKEN_ID).sum())
        assert stats["trained_tokens"] == targets
    # Batches as the Trainer sees them: pad-to-longest and padding-free packing.
    samples = [ds[i] for i in range(8)]
    shifted = sum(int((s["labels"][1:] != IGNORE_TOKEN_ID).sum()) for s in samples)
    padded = sft_data.PadToLongestCollator.for_tokenizer(tokenizer)(samples)
    packing_args = train_hw_parallel.DataArguments(padding_free=True)
    packed = train_hw_parallel.make_collator(packing_args, "flash_attention_2", tokenizer)(samples)
    assert isinstance(train_hw_parallel.make_collator(packing_args, "flash_attention_2", tokenizer),
                      DataCollatorWithFlattening)
    for batch in (padded, packed):
        assert int((batch["labels"] != IGNORE_TOKEN_ID).sum()) == shifted
        assert int((batch["labels"][:, 1:] != IGNORE_TOKEN_ID).sum()) == shifted


def test_sample_whose_only_trained_label_is_position_zero_is_dropped(tmp_path, tokenizer):
    # Left truncation to 1 token keeps only the final "\n" of the answer: trained by
    # the masking, but no target.
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Hi", "Hello.")])
    arrays, stats = build(path, tokenizer, max_length=1, truncation="left")
    assert stats["conversations_kept"] == 0 and stats["dropped_no_trained_token_after_truncation"] == 1


# ------------------------------------------------- tool turns are inputs (issue 11)
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SHAREGPT_TOOL_RECORD = {"conversations": [
    {"from": "human", "value": "Weather in Paris?"}, {"from": "function_call", "value": CALL},
    {"from": "observation", "value": '{"temp_c": 18}'}, {"from": "gpt", "value": "It is 18 C in Paris."}]}
OPENAI_TOOL_RECORD = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18}'},
    {"role": "assistant", "content": "It is 18 C in Paris."},
    {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]}


def _turn(role, content):
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _runs(tokenizer, ids, labels):
    """(decoded text, trained?) for each run of consecutive positions alike."""
    runs, j = [], 0
    while j < len(ids):
        k = j
        while k < len(ids) and (labels[k] != IGNORE_TOKEN_ID) == (labels[j] != IGNORE_TOKEN_ID):
            k += 1
        runs.append((tokenizer.decode(ids[j:k]), labels[j] != IGNORE_TOKEN_ID))
        j = k
    return runs


@pytest.mark.parametrize("record", [SHAREGPT_TOOL_RECORD, OPENAI_TOOL_RECORD], ids=["sharegpt", "openai"])
def test_tool_records_train_the_model_turns_only(tmp_path, tokenizer, record):
    """Token by token: the full rendering is the template's, every trained label equals
    its input id, and the trained runs are exactly the model's call and answers
    (assistant mode) or the user turns (reverse mode); the tool result never is."""
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    q = "Weather in Paris?"
    head = "\n" + _turn("user", q)
    call, result, answer = _turn("assistant", CALL), _turn("tool", '{"temp_c": 18}'), _turn("assistant", "It is 18 C in Paris.")
    system = ("\n" + _turn("system", "You are a good state predictor."), False)
    expected = {"assistant": [(head, False), (call, True), (result, False), (answer, True)],
                "reverse": [system, (_turn("user", q), True), (call + result + answer, False)]}
    if "messages" in record:  # the OpenAI record has a second round
        thanks, welcome = _turn("user", "Thanks!"), _turn("assistant", "You are welcome.")
        expected["assistant"] += [(thanks, False), (welcome, True)]
        expected["reverse"] += [(thanks, True), (welcome, False)]
    for mode in ("assistant", "reverse"):
        arrays, stats = build(path, tokenizer, mask_mode=mode)
        ids, labels = arrays["input_ids"].tolist(), arrays["labels"].tolist()
        text = "".join(t for t, _ in expected[mode])
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"], mode
        assert all(lab == i for i, lab in zip(ids, labels) if lab != IGNORE_TOKEN_ID)
        assert _runs(tokenizer, ids, labels) == expected[mode], mode
        drops = {k: v for k, v in stats.items() if k.startswith(("dropped_", "turn_", "round_"))}
        assert drops == {} and stats["conversations_kept"] == 1, mode


# Bad bytes and ambiguous records (issue 23 row 6); silent truncation (row 9).
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_undecodable_byte_is_named_by_file_and_line(tmp_path, suffix):
    good = json.dumps({"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    body = (good + "\n" + good).encode() if suffix == ".jsonl" else f"[\n{good},\n{good}\n]".encode()
    at = body.rindex(b"Hello")  # one bad byte, in the second record
    bad = body[:at] + b"Hel\xfflo" + body[at + 5:]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(bad)
    line = bad[: bad.index(b"\xff")].count(b"\n") + 1
    with pytest.raises(sft_data.DataFormatError, match=rf"bad{suffix}:{line}: not UTF-8 \(byte 0xff at column "):
        list(sft_data.read_records(str(path)))


def _record_stats(tmp_path, records) -> tuple:
    from smolsft.chat.tokenization import load_tokenizer
    path = tmp_path / "recs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    arrays, stats = sft_data.build_features(str(path), load_tokenizer("SmolLM2-135M", 256), 256, "right", 0,
                                            "assistant")
    return path, stats


def test_record_with_both_fields_is_an_error_unless_they_agree(tmp_path):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    other = [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    _, stats = _record_stats(tmp_path, [{"conversations": turns, "messages": turns}])
    assert stats["conversations_kept"] == 1
    for rec, shown in [({"conversations": turns, "messages": other}, r"'conversations' \(2 turns\) and 'messages' \(2 turns\)"),
                       ({"conversations": [], "messages": turns}, r"'conversations' \(0 turns\) and 'messages' \(2 turns\)")]:
        with pytest.raises(sft_data.DataFormatError, match=r"recs.jsonl:2: holds both " + shown + " with different"):
            _record_stats(tmp_path, [{"conversations": turns}, rec])



@pytest.mark.parametrize("side", ["right", "left"])
def test_truncated_samples_and_lost_trained_tokens_are_counted(tmp_path, tokenizer, side):
    from conversation_func import mask_conversation
    from smolsft.chat.format import normalize_conversation

    max_len = 40 if side == "right" else 20
    from test_train_hw_parallel import CHATS, write_chats

    path = write_chats(tmp_path / "chats.jsonl", CHATS)
    arrays, stats = sft_data.build_features(str(path), tokenizer, max_len, side, 0, "assistant")
    truncated = lost = 0
    for chat in CHATS:  # independently: the untruncated masking, cut here
        ids, labels = mask_conversation(normalize_conversation([{"role": r, "content": t} for r, t in chat]),
                                        tokenizer, ["assistant"])
        full = int((labels[1:] != -100).sum())
        if len(ids) > max_len:
            truncated += 1
            kept = labels[:max_len] if side == "right" else labels[-max_len:]
            lost += full - int((kept[1:] != -100).sum())
    assert truncated >= 2 and lost > 0  # the case under test
    assert stats["truncated_samples"] == truncated and stats["trained_tokens_lost_to_truncation"] == lost
    line = sft_data.format_stats(stats)
    assert f"truncated: {truncated} samples, {lost} trained tokens lost" in line
