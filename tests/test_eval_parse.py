"""The prompt parser: canonical captions, the generator's paraphrases and short prompts, and free
human phrasings it has never seen."""

import pytest

from videodit.errors import VideoditError
from videodit.eval.parse import ObjectSpec, parse_prompt


def _obj(p, i=0) -> ObjectSpec:
    return p.objects[i]


@pytest.mark.parametrize("text, family, background, objects, relation", [
    ("A small red circle moves to the right on a black background.", "single", "black",
     [("red", "circle", "small", "right", None, 1)], None),
    ("A blue square moves up and a yellow triangle stays still, on a white background.", "pair", "white",
     [("blue", "square", None, "up", None, 1), ("yellow", "triangle", None, "still", None, 1)], None),
    ("Three green squares move to the left on a gray background.", "count", "gray",
     [("green", "square", None, "left", None, 3)], None),
    ("A pink circle is to the left of an orange triangle, on a black background.", "relation", "black",
     [("pink", "circle", None, "still", None, 1), ("orange", "triangle", None, "still", None, 1)],
     (0, "left_of", 1)),
    ("A red ball and a blue ball roll toward each other and bounce apart.", "collision", None,
     [("red", "circle", None, "toward", None, 1), ("blue", "circle", None, "toward", None, 1)], None),
    ("A green square slides to the right behind a gray wall and comes out the other side.",
     "occlusion", None, [("green", "square", None, "right", None, 1)], None),
    ("red ball bouncing", "single", None, [("red", "circle", None, "bounces", None, 1)], None),
    ("A large purple disc is dropped.", "single", None, [("purple", "circle", "large", "falls", None, 1)], None),
    ("A cyan dot is tossed to the left on white", "single", "white",
     [("cyan", "circle", None, "thrown_left", None, 1)], None),
])
def test_canonical_forms(text, family, background, objects, relation):
    p = parse_prompt(text)
    assert p.unparsed == ()
    assert p.family == family
    assert p.background == background
    got = [(o.color, o.shape, o.size, o.motion, o.speed, o.count) for o in p.objects]
    assert got == objects
    assert (None if p.relation is None else (p.relation.subject, p.relation.relation, p.relation.object)) == relation


@pytest.mark.parametrize("text, check", [
    ("two grey boxes drifting leftward against a white backdrop",
     lambda p: p.background == "white" and _obj(p).count == 2 and _obj(p).motion == "left"),
    ("a pair of cyan dots heading right on black",
     lambda p: p.family == "count" and _obj(p).count == 2 and _obj(p).motion == "right" and p.background == "black"),
    ("a yellow block is falling", lambda p: _obj(p).motion == "falls" and _obj(p).shape == "square"),
    ("orange triangle dropping onto the floor", lambda p: _obj(p).motion == "falls"),
    ("bouncing ball", lambda p: _obj(p).motion == "bounces" and _obj(p).shape == "circle"),
    ("a blue box sitting still", lambda p: _obj(p).motion == "still"),
    ("a stationary pink triangle on grey", lambda p: _obj(p).motion == "still" and p.background == "gray"),
    ("a green ball towards the left, quickly", lambda p: _obj(p).motion == "left" and _obj(p).speed == "quickly"),
    ("a red disc slowly floats upward", lambda p: _obj(p).motion == "up" and _obj(p).speed == "slowly"),
    ("a blue square sinks", lambda p: _obj(p).motion == "down"),
    ("a red ball moves from left to right", lambda p: _obj(p).motion == "right"),
    ("a purple ball on top of a green box",
     lambda p: p.relation is not None and p.relation.relation == "above" and p.family == "relation"),
    ("an orange square beneath a cyan circle, white background",
     lambda p: p.relation.relation == "below" and p.relation.subject == 0),
    ("a red circle right of a blue triangle", lambda p: p.relation.relation == "right_of"),
    ("a fast red ball and a slow blue ball collide",
     lambda p: p.family == "collision" and [o.speed for o in p.objects] == ["quickly", "slowly"]),
    ("two balls crash into each other", lambda p: p.family == "collision" and len(p.objects) == 2),
    ("a yellow dot passes behind a wall", lambda p: p.family == "occlusion" and p.allowed_backgrounds() == ("black", "white")),
    ("A red square doesn't move.", lambda p: _obj(p).motion == "still"),
    ("three small green triangles resting", lambda p: _obj(p).count == 3 and _obj(p).size == "small"),
    ("a red ball and a blue square move up", lambda p: [o.motion for o in p.objects] == ["up", "up"]),
    ("a yellow ball with a cyan square to its left",
     lambda p: (p.relation.subject, p.relation.relation, p.relation.object) == (1, "left_of", 0)),
    ("A crimson sphere glides rightward over a dark backdrop",
     lambda p: _obj(p).color == "red" and _obj(p).motion == "right" and p.relation is None),
    ("Here is a green triangle moving to the left at high speed on a black canvas",
     lambda p: _obj(p).speed == "quickly" and p.background == "black" and not p.unparsed),
    ("the red ball is on the left and the blue square is on the right",
     lambda p: p.relation.relation == "left_of" and [o.motion for o in p.objects] == ["still", "still"]),
    ("a red ball at the top and a green box at the bottom, on white",
     lambda p: p.relation.relation == "above" and p.background == "white"),
    ("a pink disk hits a purple dot head-on", lambda p: p.family == "collision"),
    ("a tiny cyan triangle is thrown rightward", lambda p: _obj(p).motion == "thrown_right" and _obj(p).size == "small"),
])
def test_human_phrasings(text, check):
    p = parse_prompt(text)
    assert check(p), (text, p)


def test_reports_what_it_could_not_parse():
    p = parse_prompt("A red dragon flies quickly to the left")
    assert "dragon" in p.unparsed
    assert "dragon" in p.describe_unparsed()
    assert _obj(p).color == "red" and _obj(p).motion == "left"
    p = parse_prompt("gray boxes")
    assert any("not an object colour" in u for u in p.unparsed)


def test_canonical_round_trip_and_expansion():
    for text in ("red ball bouncing", "two grey boxes drifting leftward against a white backdrop",
                 "a purple ball on top of a green box", "slow red ball and blue ball colliding",
                 "a yellow dot passes behind a wall", "blue square rising quickly, pink dot resting, black"):
        p = parse_prompt(text)
        again = parse_prompt(p.canonical())
        assert again.objects == p.objects and again.family == p.family, (text, p.canonical())
        assert again.background == p.background and again.relation == p.relation
    assert parse_prompt("red ball bouncing").canonical() == "A red circle bounces."
    with pytest.raises(VideoditError, match="names no object"):
        parse_prompt("something happens").canonical()


def test_agrees_with_generator_captions():
    """Every caption, paraphrase and short prompt of 40 samples per split parses to its truth."""
    from videodit.world import make_sample

    inverse = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
    for split in ("train", "eval"):
        for i in range(40):
            s = make_sample(split, i, width=32, height=32, frames=5 if i % 2 else 9)
            t = s.truth
            for text in [s.caption, *s.paraphrases, *s.short]:
                p = parse_prompt(text)
                assert p.unparsed == (), text
                assert p.family == t["family"], text
                assert p.background in (None, t["background"]), text
                objs = t["objects"][:1] if t["family"] == "count" else t["objects"]
                assert len(p.objects) == len(objs), text
                if t["family"] == "count":
                    assert p.objects[0].count == len(t["objects"]), text
                for o in objs:
                    q = next(q for q in p.objects if (q.color, q.shape) == (o["color"], o["shape"]))
                    assert q.size in (None, o["size"]), text
                    if t["family"] == "collision":
                        assert q.motion == "toward" and (q.speed or "normal") == o["speed"], text
                    elif t["family"] == "relation":
                        assert q.motion == "still", text
                    elif q.motion is not None or t["family"] != "occlusion":
                        assert q.motion == o["motion"], text
                        assert (q.speed or "normal") == (o["speed"] or "normal"), text
                if t["relation"]:
                    r = t["relation"]
                    key = lambda k: (t["objects"][k]["color"], t["objects"][k]["shape"])  # noqa: E731
                    pk = lambda k: (p.objects[k].color, p.objects[k].shape)  # noqa: E731
                    got = (pk(p.relation.subject), p.relation.relation, pk(p.relation.object))
                    want = (key(r["subject"]), r["relation"], key(r["object"]))
                    assert got in (want, (want[2], inverse[want[1]], want[0])), text


def test_vocabulary_covers_the_world():
    from videodit.eval import parse
    from videodit.world.palette import BACKGROUNDS, COLORS
    from videodit.world.scene import SHAPES

    assert set(parse._COLORS) == set(COLORS)
    assert set(parse._SHAPES) - {""} == set(SHAPES)
    assert set(parse._BACKGROUNDS) == set(BACKGROUNDS)
    for name in (*COLORS, *SHAPES):
        assert parse_prompt(f"a {name} ball" if name in COLORS else f"a red {name}").unparsed == ()
