"""Speaker labels of a play script and the judge that recognises speakers (issue 17's data side)."""

from __future__ import annotations

import numpy as np
import pytest

from textdiffusion.data.corpus import DataError
from textdiffusion.data.speakers import parse_speeches, split_speakers
from textdiffusion.speaker_judge import SpeakerJudge

SCRIPT = """ACT I. A street.

ROMEO:
O, she doth teach the torches to burn bright!

First Citizen:
Before we proceed any further, hear me speak.
Speak, speak.

ROMEO:
Is the day so young?

KING RICHARD III:
Now is the winter of our discontent

not a speech because this line has no header:
"""


def test_speeches_are_header_and_body():
    speeches = parse_speeches(SCRIPT)
    assert [s.speaker for s in speeches] == ["ROMEO", "First Citizen", "ROMEO", "KING RICHARD III"]
    assert speeches[1].body == "Before we proceed any further, hear me speak.\nSpeak, speak."
    assert all(":" not in s.body.split("\n")[0][-1:] for s in speeches)  # the header is not in the body


def _script(counts: dict[str, int]) -> str:
    """A script where speaker NAME gives ``counts[NAME]`` speeches, numbered, round robin."""
    blocks, left = [], dict(counts)
    while any(left.values()):
        for name in counts:
            if left[name]:
                left[name] -= 1
                blocks.append(f"{name}:\nspeech {counts[name] - left[name]} of {name.lower()}")
    return "\n\n".join(blocks) + "\n"


def test_top_speakers_by_characters_and_every_tenth_speech_held_out():
    split = split_speakers(_script({"ANNE": 25, "BOBO": 30, "CAL": 3, "DORA": 30}), top=3)
    assert split.speakers == ("BOBO", "DORA", "ANNE")  # most characters first, ties by name
    assert [len(b) for b in split.train] == [27, 27, 23]
    held = {(i, body) for i, body in split.held_out}
    assert (0, "speech 10 of bobo") in held and (2, "speech 20 of anne") in held and len(held) == 3 + 3 + 2
    assert not any(body in split.train[i] for i, body in split.held_out)
    assert split.label_of("dora") == 1 and split.label_of(" Anne ") == 2


@pytest.mark.parametrize(("text", "top", "message"), [
    ("no headers here\n\njust prose\n", 8, "no speeches with speaker headers"),
    (SCRIPT, 8, "fewer than data.label_top=8; lower data.label_top to at most 3"),
    (SCRIPT, 1, "at least 2"),
])
def test_a_corpus_that_cannot_give_labels_is_one_line_error(text, top, message):
    with pytest.raises(DataError, match=message) as e:
        split_speakers(text, top=top)
    assert "\n" not in str(e.value)


def test_an_unknown_speaker_names_the_trained_ones():
    split = split_speakers(SCRIPT, top=2)
    with pytest.raises(DataError, match="not one of the 2 trained speakers; choose one of ROMEO, First Citizen"):
        split.label_of("HAMLET")


def test_the_judge_recognises_real_held_out_speeches_well_above_chance(shakespeare):
    train = shakespeare[:int(len(shakespeare) * 0.9)]
    split = split_speakers(train, top=8)
    assert len(split.held_out) > 100
    judge = SpeakerJudge(split)
    chance = 1 / len(split.speakers)
    # 128 characters, the length of a generated speech: about 4x chance when this test was written
    assert judge.held_out_accuracy(128) > 2.5 * chance
    assert judge.held_out_accuracy() >= judge.held_out_accuracy(32)  # whole speeches say more than 32 chars
    texts = [body[:128] for _, body in split.held_out[:20]]
    post = judge.posteriors(texts)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert (post.argmax(axis=1) == judge.predict(texts)).all()
    # a text in the judge's own training speeches is recognised (it fitted them)
    own = [bodies[0] for bodies in split.train]
    assert judge.accuracy(own, list(range(len(own)))) == 1.0
