"""SynthWorld captions: the canonical caption, paraphrases and short prompts of a scene.

The canonical caption has exactly the forms of the SynthWorld spec, so it names the size only in
the "single" family, and names no background for "collision" and "occlusion" (the spec's forms
end with the event). Paraphrases draw from synonym and template lists; they name the size about
half the time, always name the background for single/pair/count/relation and about half the time
for collision/occlusion. Short prompts are noun phrases ("red ball bouncing") and name the
background now and then.

Every caption agrees with the scene:
- Speeds: "slowly" / "quickly" (adjectives "slow" / "fast" for collision balls) appear exactly when
  an object's speed is not "normal"; gravity-driven motions (falls, bounces) have no speed word.
- "rolls" is said only of circles; "drifts", "glides" and "floats" never with "quickly".
- Circle ~ ball, disc, dot; square ~ box, block; colours are the palette names.
"""

from __future__ import annotations

from videodit.world.scene import RandomDraw, Scene, SceneObject, seed_entropy

N_PARAPHRASES = 5
N_SHORT = 3
MENTION_SIZE = 0.5      # chance that a paraphrase or short prompt names the sizes
EVENT_BACKGROUND = 0.5  # chance that a collision / occlusion paraphrase names the background
SHORT_BACKGROUND = 0.3  # chance that a short prompt names the background

SHAPE_WORDS = {"circle": ("circle", "ball", "disc", "dot"), "square": ("square", "box", "block"),
               "triangle": ("triangle",)}
NUMBER_WORDS = {2: "two", 3: "three"}
SPEED_ADVERBS = {"slowly": " slowly", "normal": "", "quickly": " quickly"}
SPEED_ADJECTIVES = {"slowly": "slow ", "normal": "", "quickly": "fast "}
BACKGROUND_PHRASES = ("on a {bg} background", "against a {bg} background", "in front of a {bg} background")

# Verb phrases per motion, (singular, plural); the first is the canonical one. "{s}" takes the
# speed adverb (" slowly", " quickly" or nothing).
PHRASES = {
    "still": [("stays still", "stay still"), ("rests", "rest"), ("does not move", "do not move"),
              ("sits still", "sit still")],
    "left": [("moves{s} to the left", "move{s} to the left"), ("slides{s} to the left", "slide{s} to the left"),
             ("rolls{s} to the left", "roll{s} to the left"), ("glides{s} to the left", "glide{s} to the left"),
             ("drifts{s} to the left", "drift{s} to the left"), ("moves{s} leftward", "move{s} leftward")],
    "right": [("moves{s} to the right", "move{s} to the right"), ("slides{s} to the right", "slide{s} to the right"),
              ("rolls{s} to the right", "roll{s} to the right"), ("glides{s} to the right", "glide{s} to the right"),
              ("drifts{s} to the right", "drift{s} to the right"), ("moves{s} rightward", "move{s} rightward")],
    "up": [("moves{s} up", "move{s} up"), ("rises{s}", "rise{s}"), ("floats{s} up", "float{s} up"),
           ("moves{s} upward", "move{s} upward")],
    "down": [("moves{s} down", "move{s} down"), ("sinks{s}", "sink{s}"), ("moves{s} downward", "move{s} downward"),
             ("drifts{s} down", "drift{s} down")],
    "falls": [("falls", "fall"), ("drops", "drop"), ("is dropped", "are dropped"), ("falls down", "fall down")],
    "bounces": [("bounces", "bounce"), ("bounces on the floor", "bounce on the floor"),
                ("is dropped and bounces", "are dropped and bounce")],
    "thrown_left": [("is thrown{s} to the left", "are thrown{s} to the left"),
                    ("is tossed{s} to the left", "are tossed{s} to the left"),
                    ("is thrown{s} leftward", "are thrown{s} leftward")],
    "thrown_right": [("is thrown{s} to the right", "are thrown{s} to the right"),
                     ("is tossed{s} to the right", "are tossed{s} to the right"),
                     ("is thrown{s} rightward", "are thrown{s} rightward")],
}

# Participle phrases for short prompts (the same form serves one object and several).
GERUNDS = {
    "still": ["resting", "standing still", "not moving"],
    "left": ["moving{s} left", "sliding{s} left", "rolling{s} left", "drifting{s} left"],
    "right": ["moving{s} right", "sliding{s} right", "rolling{s} right", "drifting{s} right"],
    "up": ["rising{s}", "moving{s} up", "floating{s} up"],
    "down": ["sinking{s}", "moving{s} down", "drifting{s} down"],
    "falls": ["falling", "dropping"],
    "bounces": ["bouncing", "bouncing on the floor"],
    "thrown_left": ["thrown{s} left", "tossed{s} left", "thrown{s} to the left"],
    "thrown_right": ["thrown{s} right", "tossed{s} right", "thrown{s} to the right"],
}

RELATION_WORDS = {"left_of": ("to the left of", "left of"), "right_of": ("to the right of", "right of"),
                  "above": ("above", "over"), "below": ("below", "under", "beneath")}
INVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
OCCLUSION_VERBS = ("slides", "moves", "glides", "rolls", "drifts")


def _suits(phrase: str, shape: str, speed: str | None) -> bool:
    if "roll" in phrase and shape != "circle":
        return False
    return not (speed == "quickly" and any(w in phrase for w in ("drift", "glide", "float")))


def _with_speed(phrase: str, speed: str | None) -> str:
    return phrase.replace("{s}", SPEED_ADVERBS[speed or "normal"])


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("x") else "s")


def _noun(obj: SceneObject, word: str | None = None, size: bool = False, plural: bool = False,
          speed_adjective: bool = False) -> str:
    """'small red ball' (word defaults to the shape name)."""
    word = word or obj.shape
    words = [f"{obj.size} " if size else "", SPEED_ADJECTIVES[obj.speed or "normal"] if speed_adjective else "",
             f"{obj.color} ", _plural(word) if plural else word]
    return "".join(words)


def _verb(obj: SceneObject, plural: bool = False, draw: RandomDraw | None = None) -> str:
    options = [p[plural] for p in PHRASES[obj.motion] if _suits(p[0], obj.shape, obj.speed)]
    return _with_speed(draw.pick(options) if draw else options[0], obj.speed)


# ---------------------------------------------------------------- canonical

def canonical_caption(scene: Scene) -> str:
    objs, bg = scene.objects, scene.background
    if scene.family == "single":
        (o,) = objs
        return f"{_cap(_a(_noun(o, size=True)))} {_verb(o)} on a {bg} background."
    if scene.family == "pair":
        a, b = objs
        return f"{_cap(_a(_noun(a)))} {_verb(a)} and {_a(_noun(b))} {_verb(b)}, on a {bg} background."
    if scene.family == "count":
        o = objs[0]
        return f"{_cap(NUMBER_WORDS[len(objs)])} {_noun(o, plural=True)} {_verb(o, plural=True)} on a {bg} background."
    if scene.family == "relation":
        a, b = objs
        rel = RELATION_WORDS[scene.relation["relation"]][0]
        return f"{_cap(_a(_noun(a)))} is {rel} {_a(_noun(b))}, on a {bg} background."
    if scene.family == "collision":
        a, b = objs
        return (f"{_cap(_a(_noun(a, 'ball', speed_adjective=True)))} and "
                f"{_a(_noun(b, 'ball', speed_adjective=True))} roll toward each other and bounce apart.")
    (o,) = objs   # occlusion
    return (f"{_cap(_a(_noun(o)))} slides{SPEED_ADVERBS[o.speed]} to the {o.motion} behind a gray wall "
            f"and comes out the other side.")


# ---------------------------------------------------------------- paraphrases

def _paraphrase(scene: Scene, draw: RandomDraw) -> str:
    objs, bg = scene.objects, scene.background
    size = draw.chance(MENTION_SIZE)
    bgp = draw.pick(BACKGROUND_PHRASES).format(bg=bg)
    word = {o.shape: draw.pick(SHAPE_WORDS[o.shape]) for o in objs}   # one word per shape and caption
    nouns = [_noun(o, word[o.shape], size=size) for o in objs]
    template = int(draw.pick(range(4)))
    if scene.family == "single":
        n, v = _a(nouns[0]), _verb(objs[0], draw=draw)
        return _cap((f"{n} {v} {bgp}.", f"{bgp}, {n} {v}.", f"a {bg} background with {n} that {v}.",
                     f"{n} {v}, {bg} background.")[template])
    if scene.family == "pair":
        (n0, n1), (v0, v1) = (_a(n) for n in nouns), (_verb(o, draw=draw) for o in objs)
        return _cap((f"{n0} {v0} and {n1} {v1} {bgp}.", f"{bgp}, {n0} {v0} while {n1} {v1}.",
                     f"{n0} {v0}; {n1} {v1}; {bg} background.", f"{bgp}, {n0} {v0} and {n1} {v1}.")[template])
    if scene.family == "count":
        o, k = objs[0], NUMBER_WORDS[len(objs)]
        n, v = _noun(o, word[o.shape], size=size, plural=True), _verb(o, plural=True, draw=draw)
        return _cap((f"{k} {n} {v} {bgp}.", f"{bgp}, {k} {n} {v}.", f"{k} identical {n} {v} {bgp}.",
                     f"a {bg} background with {k} {n} that {v}.")[template])
    if scene.family == "relation":
        relation = scene.relation["relation"]
        rel, inv = draw.pick(RELATION_WORDS[relation]), draw.pick(RELATION_WORDS[INVERSE[relation]])
        n0, n1 = (_a(n) for n in nouns)
        return _cap((f"{n0} is {rel} {n1} {bgp}.", f"{bgp}, {n0} sits {rel} {n1}.",
                     f"{n1} is {inv} {n0} {bgp}.", f"{n0} rests {rel} {n1}, {bg} background.")[template])
    tail = f" {bgp}" if draw.chance(EVENT_BACKGROUND) else ""
    if scene.family == "collision":
        ball = draw.pick(SHAPE_WORDS["circle"])
        n0, n1 = (_a(_noun(o, ball, size=size, speed_adjective=True)) for o in objs)
        return _cap((f"{n0} and {n1} roll toward each other and bounce apart{tail}.",
                     f"{n0} and {n1} roll toward each other and collide{tail}.",
                     f"{n0} rolling from the left and {n1} rolling from the right collide and bounce apart{tail}.",
                     f"{n1} rolling from the right and {n0} rolling from the left hit each other and "
                     f"bounce apart{tail}.")[template])
    o = objs[0]   # occlusion
    verb = draw.pick([v for v in OCCLUSION_VERBS if _suits(v, o.shape, o.speed)]) + SPEED_ADVERBS[o.speed]
    n = _a(nouns[0])
    return _cap((f"{n} {verb} to the {o.motion} behind a gray wall and comes out the other side{tail}.",
                 f"{n} {verb} to the {o.motion}, passes behind a gray wall and reappears on the other side{tail}.",
                 f"{n} {verb} {o.motion}ward, disappears behind a gray wall and comes out again{tail}.",
                 f"{n} {verb} to the {o.motion} and is hidden for a moment by a gray wall{tail}.")[template])


def _distinct(make, draw: RandomDraw, n: int, exclude: str = "") -> list[str]:
    """Up to n different strings from ``make(draw)`` (a few extra draws absorb repeats)."""
    out: list[str] = []
    for _ in range(6 * n):
        text = make(draw)
        if text != exclude and text not in out:
            out.append(text)
            if len(out) == n:
                break
    return out


def paraphrases(scene: Scene, draw: RandomDraw) -> list[str]:
    return _distinct(lambda d: _paraphrase(scene, d), draw, N_PARAPHRASES, exclude=canonical_caption(scene))


# ---------------------------------------------------------------- short prompts

def _gerund(obj: SceneObject, draw: RandomDraw) -> str:
    return _with_speed(draw.pick([g for g in GERUNDS[obj.motion] if _suits(g, obj.shape, obj.speed)]), obj.speed)


def _short(scene: Scene, draw: RandomDraw) -> str:
    objs = scene.objects
    size = draw.chance(MENTION_SIZE)
    tail = f", {scene.background} background" if draw.chance(SHORT_BACKGROUND) else ""
    nouns = [_noun(o, draw.pick(SHAPE_WORDS[o.shape]), size=size) for o in objs]
    if scene.family == "single":
        return f"{nouns[0]} {_gerund(objs[0], draw)}{tail}"
    if scene.family == "pair":
        join = draw.pick((", ", " and "))
        return f"{nouns[0]} {_gerund(objs[0], draw)}{join}{nouns[1]} {_gerund(objs[1], draw)}{tail}"
    if scene.family == "count":
        o = objs[0]
        return f"{NUMBER_WORDS[len(objs)]} {_noun(o, draw.pick(SHAPE_WORDS[o.shape]), size=size, plural=True)} " \
               f"{_gerund(o, draw)}{tail}"
    if scene.family == "relation":
        relation = scene.relation["relation"]
        if draw.chance(0.5):
            return f"{nouns[0]} {RELATION_WORDS[relation][-1]} {nouns[1]}{tail}"
        return f"{nouns[1]} {RELATION_WORDS[INVERSE[relation]][-1]} {nouns[0]}{tail}"
    if scene.family == "collision":
        ball = draw.pick(SHAPE_WORDS["circle"])
        n0, n1 = (_noun(o, ball, size=size, speed_adjective=True) for o in objs)
        return f"{n0} and {n1} {draw.pick(('colliding', 'bouncing off each other', 'rolling into each other'))}{tail}"
    o = objs[0]   # occlusion
    how = draw.pick(("passing{s} " + o.motion + " behind a wall", "sliding{s} " + o.motion + " behind a gray wall",
                     "moving{s} " + o.motion + " behind a wall"))
    return f"{nouns[0]} {_with_speed(how, o.speed)}{tail}"


def short_prompts(scene: Scene, draw: RandomDraw) -> list[str]:
    return _distinct(lambda d: _short(scene, d), draw, N_SHORT)


def scene_captions(scene: Scene) -> tuple[str, list[str], list[str]]:
    """(canonical caption, paraphrases, short prompts), drawn from the scene's own caption stream."""
    draw = RandomDraw(seed_entropy(scene.split, scene.index, scene.seed, scene.family, purpose=1))
    return canonical_caption(scene), paraphrases(scene, draw), short_prompts(scene, draw)
