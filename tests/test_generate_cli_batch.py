"""Batch files for `anytalker generate --batch`: the reference's input_example JSON and MultiTalk-style tasks."""

from __future__ import annotations

import json

import pytest

from anytalker_core.errors import InputError
from anytalker_core.cli.generate import load_batch_file, parse_boxes


def write(tmp_path, data, name="tasks.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_reference_format(tmp_path):
    # the shape of HKUST-C4G/AnyTalker input_example/customize_your_input_here.json
    path = write(tmp_path, {
        "1p-0": {"image_path": "/abs/images/1p-0.png", "caption": "A man.", "enhance_caption": "A man talks.",
                 "audio_list": ["audios/1p-0.wav"]},
        "2p-0": {"image_path": "images/2p-0.png", "caption": "Two people.", "enhance_caption": "",
                 "audio_list": ["audios/2p-0-left.wav", "audios/2p-0-right.wav"]},
        "old": {"image_path": "i.png", "caption": "c", "audio_left": "l.wav", "audio_right": "r.wav"},
    })
    tasks = load_batch_file(path)
    assert [t.name for t in tasks] == ["1p-0", "2p-0", "old"]
    one, two, old = tasks
    assert str(one.image) == "/abs/images/1p-0.png"
    assert one.audio == [tmp_path / "audios" / "1p-0.wav"]
    assert one.prompt == "A man talks."  # enhance_caption wins, as in the reference
    assert two.prompt == "Two people."  # empty enhance_caption falls back to caption
    assert two.image == tmp_path / "images" / "2p-0.png"
    assert [p.name for p in two.audio] == ["2p-0-left.wav", "2p-0-right.wav"]
    assert [p.name for p in old.audio] == ["l.wav", "r.wav"]
    assert one.audio_mode is None


def test_multitalk_style_list_and_single_object(tmp_path):
    tasks = load_batch_file(write(tmp_path, [
        {"prompt": "p", "cond_image": "a.png", "cond_audio": {"person2": "b.wav", "person1": "a.wav"},
         "audio_type": "add", "seed": 3, "boxes": [[0, 0, 10, 10], [20, 0, 30, 10]]},
        {"name": "second", "prompt": "q", "cond_image": "c.png", "cond_audio": {"person1": "c.wav"},
         "audio_type": "pad", "negative_prompt": "blurry"},
    ]))
    first, second = tasks
    assert first.name == "task_000" and second.name == "second"
    assert [p.name for p in first.audio] == ["a.wav", "b.wav"]  # person1 is the leftmost
    assert first.audio_mode == "concat" and first.seed == 3 and len(first.boxes) == 2
    assert second.audio_mode == "pad" and second.negative_prompt == "blurry"
    single = load_batch_file(write(tmp_path, {"prompt": "p", "cond_image": "a.png",
                                              "cond_audio": {"person1": "a.wav"}}, "one.json"))
    assert len(single) == 1 and single[0].prompt == "p"


@pytest.mark.parametrize("data, needle", [
    ("{not json", "not valid JSON"),
    ([], "contains no tasks"),
    (42, "expected an object of named tasks or a list"),
    ({"a": {"caption": "x", "audio_list": ["a.wav"]}}, "no image"),
    ({"a": {"image_path": "i.png", "caption": "x"}}, "no audio"),
    ({"a": {"image_path": "i.png", "audio_list": []}}, "the audio list is empty"),
    ({"a": {"image_path": "i.png", "audio_list": "a.wav"}}, "expected a list of audio paths"),
    ({"a": {"image_path": "i.png", "audio_list": ["a.wav"], "audio_type": "mix"}}, "expected 'pad' or 'concat'"),
    ({"a": {"image_path": "i.png", "audio_list": ["a.wav"], "seed": "1"}}, "seed: expected an integer"),
    ({"a": {"image_path": "i.png", "audio_list": ["a.wav"], "boxes": [[1, 2, 3]]}}, "boxes: expected"),
    ([{"name": "x", "cond_image": "i.png", "cond_audio": {"person1": "a.wav"}},
      {"name": "x", "cond_image": "i.png", "cond_audio": {"person1": "a.wav"}}], "must be unique"),
    ([{"cond_image": "i.png", "cond_audio": {"speaker": "a.wav"}}], "person1, person2"),
    ({"../evil": {"image_path": "i.png", "audio_list": ["a.wav"]}}, "cannot be used as a file name"),
])
def test_bad_batch_files(tmp_path, data, needle):
    with pytest.raises(InputError, match=None) as info:
        load_batch_file(write(tmp_path, data))
    assert needle in str(info.value)
    assert "tasks.json" in str(info.value)


def test_missing_batch_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_batch_file(tmp_path / "absent.json")


def test_parse_boxes():
    assert parse_boxes("1,2,30,40; 50,2,80,40") == [[1, 2, 30, 40], [50, 2, 80, 40]]
    for bad, needle in [("1,2,3", "expected x1,y1,x2,y2"), ("a,b,c,d", "not four numbers"),
                        ("30,2,1,40", "x2 > x1"), (";", "no box given")]:
        with pytest.raises(InputError) as info:
            parse_boxes(bad)
        assert needle in str(info.value)
