"""Prompt parser: the content a SynthWorld video must show, derived from the prompt text alone.

The evaluator never looks at the generator's caption code; it reads prompts the way a person
would. ``parse_prompt(text)`` turns a canonical caption, a paraphrase, a short prompt ("red ball
bouncing") or a free phrasing ("two grey boxes drifting leftward against a white backdrop")
into a ``ParsedPrompt``; ``ParsedPrompt.canonical()`` writes it back as one full caption in the
SynthWorld style, which is how short user prompts are expanded for the model.

How it works: the text is lower-cased and split into words; a phrase table (longest match first)
maps words and multi-word phrases to typed tokens (colour, shape, size, number, direction,
motion verb, speed, background, wall, relation, collision). Runs of article / number / size /
colour / shape tokens are object mentions; the tokens after a mention, up to the next one, say
what that object does. Words that are neither in the table nor filler words are reported in
``ParsedPrompt.unparsed`` so a caller can say which part of a prompt was not understood.

Unspecified parts stay ``None`` and mean "anything is accepted": no background word accepts any
background (except that a wall implies black or white), no size word accepts either size, no
speed word accepts any of the three speeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from videodit.errors import VideoditError
from videodit.world.palette import BACKGROUNDS, COLORS, WALL_BACKGROUNDS

# Palette names come from the world (one source of truth); the words for colours, shapes and
# motions (synonyms, phrasings) are the parser's own, written independently of the caption code.
COLOR_NAMES = tuple(COLORS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
# "thrown": a throw with no side named; "toward": the two balls of a collision.
MOTIONS = ("still", "left", "right", "up", "down", "falls", "bounces",
           "thrown_left", "thrown_right", "thrown", "toward")
# Linear (constant-speed) motions, whose speed word the speed metric checks.
LINEAR_MOTIONS = ("left", "right", "up", "down")
GRAVITY_MOTIONS = ("falls", "bounces", "thrown_left", "thrown_right", "thrown")
RELATIONS = ("left_of", "right_of", "above", "below", "beside")


# --- lexicon ---------------------------------------------------------------------------------
# Each entry: phrase -> (kind, value). Phrases are space-separated word sequences.

def _entries(kind: str, table: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, str]]:
    return {phrase: (kind, value) for value, phrases in table.items() for phrase in phrases}


_COLORS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "lime", "emerald"),
    "blue": ("blue", "navy", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "gold", "lemon"),
    "purple": ("purple", "violet", "lilac", "lavender", "magenta", "mauve"),
    "orange": ("orange", "amber", "tangerine"),
    "cyan": ("cyan", "turquoise", "aqua", "teal", "aquamarine"),
    "pink": ("pink", "rose", "fuchsia", "salmon"),
}
_SHAPES = {
    "circle": ("circle", "ball", "disc", "disk", "dot", "sphere", "orb", "round", "blob", "bubble"),
    "square": ("square", "box", "block", "cube", "tile", "crate"),
    "triangle": ("triangle", "pyramid", "wedge", "triangular"),
    "": ("shape", "object", "thing", "one", "item", "figure", "body", "form"),  # any shape
}
_SIZES = {
    "small": ("small", "little", "tiny", "mini", "smaller", "smallish", "wee", "petite"),
    "large": ("large", "big", "huge", "giant", "larger", "bigger", "great", "massive", "oversized"),
}
_NUMBERS = {
    "1": ("one", "1", "single", "a single", "lone", "a lone"),
    "2": ("two", "2", "pair of", "a pair of", "couple of", "a couple of", "twin", "both of the"),
    "3": ("three", "3", "trio of", "a trio of", "triple", "a group of three"),
    "many": ("several", "some", "a few", "few", "multiple", "a group of", "group of", "a set of",
             "a row of", "row of", "a bunch of"),
}
_BACKGROUNDS = {"black": ("black",), "white": ("white",), "gray": ("gray", "silver")}
_SPEEDS = {
    "slowly": ("slowly", "slow", "gently", "leisurely", "lazily", "gradually", "unhurriedly",
               "calmly", "at a slow pace", "at a slow speed", "slow moving", "sluggishly"),
    "normal": ("at normal speed", "at a normal speed", "at a normal pace", "at a steady pace",
               "at a moderate speed", "steadily", "moderately", "normally", "at medium speed"),
    "quickly": ("quickly", "quick", "fast", "rapidly", "swiftly", "speedily", "briskly",
                "at a fast pace", "at high speed", "at speed", "fast moving", "rapid", "hastily",
                "zooms", "zooming", "zips", "zipping", "races", "racing", "speeds", "speeding",
                "darts", "darting", "dashes", "dashing", "shoots", "shooting"),
}
# Explicit directions. "from left to right" names the motion, not a relation.
_DIRECTIONS = {
    "left": ("left", "leftward", "leftwards", "to the left", "towards the left", "toward the left",
             "westward", "westwards", "from right to left", "right to left", "the left"),
    "right": ("right", "rightward", "rightwards", "to the right", "towards the right",
              "toward the right", "eastward", "eastwards", "from left to right", "left to right",
              "the right"),
    "up": ("up", "upward", "upwards", "skyward", "skywards", "from bottom to top", "bottom to top",
           "toward the top", "towards the top", "to the top", "higher", "north", "northward",
           "at the top", "on the top"),
    "down": ("down", "downward", "downwards", "from top to bottom", "top to bottom",
             "toward the bottom", "towards the bottom", "to the bottom", "lower", "south",
             "at the bottom", "on the bottom",
             "southward"),
}
# Verbs that imply a direction on their own ("rises"); an explicit direction word wins.
_DIRECTION_VERBS = {
    "up": ("rises", "rise", "rising", "rose", "ascends", "ascend", "ascending", "climbs", "climb",
           "climbing", "floats", "float", "floating", "lifts", "lifting", "levitates", "soars",
           "soaring", "goes up", "going up", "moves up", "moving up"),
    "down": ("sinks", "sink", "sinking", "sank", "descends", "descend", "descending", "lowers",
             "lowering", "goes down", "going down", "moves down", "moving down"),
}
_GRAVITY = {
    "falls": ("falls", "fall", "falling", "fell", "fallen", "drops", "drop", "dropping",
              "dropped", "plummets", "plummeting", "plunges", "plunging", "tumbles", "tumbling",
              "falls down", "drops down", "falls to the floor", "falls to the ground",
              "drops to the floor", "drops to the ground", "lands", "landing", "hits the floor",
              "hits the ground", "under gravity", "free fall", "freefall", "free falls",
              "free falling", "comes down", "coming down", "falls from above", "let go",
              "is released", "released"),
    "bounces": ("bounces", "bounce", "bouncing", "bounced", "bouncy", "rebounds", "rebounding",
                "hops", "hopping", "bounces on the floor", "bounces on the ground",
                "bounce on the floor", "bouncing on the floor", "bouncing on the ground", "rebound",
                "bounces off the floor", "bounces off the ground", "bounces up and down",
                "bouncing up and down", "bounces along the floor"),
    "thrown": ("thrown", "throw", "throws", "throwing", "tossed", "toss", "tosses", "tossing",
               "launched", "launch", "launches", "launching", "lobbed", "lob", "lobs", "flung",
               "fling", "flings", "hurled", "hurl", "hurls", "arcs", "arcing", "in an arc",
               "along an arc", "a parabola", "in a parabola", "on a parabola", "projectile",
               "catapulted", "pitched", "thrown upward", "tossed upward",
               "thrown up", "tossed up", "is launched", "gets thrown", "gets tossed"),
}
_STILL = ("still", "stays still", "staying put", "stayed put", "stay still", "staying still", "rests", "rest", "resting",
          "at rest", "does not move", "do not move", "doesn't move", "don't move", "not moving",
          "is not moving", "are not moving", "never moves", "motionless", "stationary", "static",
          "sitting still", "sits still", "sits", "sit", "sitting", "stays put", "stay put",
          "immobile", "idle", "unmoving", "in place", "remains", "remain", "remaining", "stays",
          "stay", "staying", "stands", "stand", "standing", "stands still", "lies", "lie",
          "lying", "is placed", "are placed", "placed", "frozen", "fixed", "holds still",
          "without moving", "no motion", "not in motion", "stopped", "at a standstill",
          "keeps still", "keep still", "sits there", "just sits")
_MOVE = ("moves", "move", "moving", "moved", "slides", "slide", "sliding", "slid", "rolls",
         "roll", "rolling", "rolled", "glides", "glide", "gliding", "drifts", "drift",
         "drifting", "travels", "travel", "traveling", "travelling", "goes", "go", "going",
         "heads", "head", "heading", "headed", "runs", "run", "running", "passes", "pass",
         "passing", "shifts", "shift", "shifting", "crosses", "cross", "crossing", "walks",
         "walking", "wanders", "scoots", "scooting", "cruises", "cruising", "translates",
         "translating", "makes its way", "make their way", "steadily moves", "in motion",
         "motion", "movement", "moving along", "coasts", "coasting", "sails", "sailing",
         "swims", "swimming", "creeps", "creeping", "crawls", "crawling", "slips", "slipping",
         "advances", "advancing", "proceeds", "continues", "continuing", "keeps moving",
         "flies", "flying")
_WALL = ("wall", "a wall", "the wall", "gray wall", "occluder", "barrier", "pillar", "post",
         "column", "screen wall", "partition", "gray barrier", "gray pillar", "gray occluder",
         "gray column", "gray post", "gray partition", "walls")
_OCCLUSION = ("behind", "passes behind", "goes behind", "moves behind", "slides behind",
              "disappears", "disappearing", "disappears behind", "vanishes", "hidden", "hides",
              "hiding", "reappears", "reappearing", "re appears", "re emerges", "reemerges",
              "emerges", "emerging", "comes out", "coming out", "comes out the other side",
              "the other side", "other side", "out the other side", "on the other side",
              "far side", "the far side", "pops out", "occluded", "is occluded", "obscured",
              "comes back out", "out again", "briefly hidden", "then reappears")
_COLLISION = ("toward each other", "towards each other", "toward one another",
              "towards one another", "at each other", "into each other", "each other",
              "one another", "collide", "collides", "colliding", "collided", "collision",
              "crash", "crashes", "crashing", "bump", "bumps", "bumping", "hit each other",
              "hits each other", "bounce apart", "bounces apart", "bounce off each other",
              "bounce off one another", "bouncing apart", "bouncing off each other",
              "bouncing off one another", "bounces off each other", "bounced off each other",
              "rolling into each other", "roll into each other", "rolls into each other", "bounce back", "bounce off",
              "approach each other", "approach", "approaching", "meet", "meeting", "meets",
              "head on", "head-on", "apart", "ricochet", "ricochets", "exchange", "swap",
              "and bounce apart", "bounce away", "knock", "knocks", "strike", "strikes",
              "then separate", "separate", "separating", "hit", "hits", "hitting", "smash",
              "smashes", "smashing", "collides with", "runs into", "run into", "rolls into",
              "roll into", "crashes into", "crash into", "bumps into", "bump into", "impact")
_RELATIONS = {
    "left_of": ("to the left of", "left of", "on the left of", "to the left side of",
                "on the left side of", "at the left of", "at left of", "leftward of",
                "to left of", "is left of", "sits to the left of", "lies to the left of"),
    "right_of": ("to the right of", "right of", "on the right of", "to the right side of",
                 "on the right side of", "at the right of", "at right of", "rightward of",
                 "to right of"),
    "above": ("above", "over", "on top of", "atop", "higher than", "up above", "directly above",
              "on top", "sits above", "placed above", "positioned above"),
    "below": ("below", "under", "beneath", "underneath", "lower than", "down below",
              "directly below", "at the bottom of", "underneath of"),
    "beside": ("next to", "beside", "alongside", "by the side of", "side by side with"),
}
# Pronoun forms name the relation of the *later* object to the earlier one: "a yellow ball with a
# cyan square to its left" = the cyan square is left of the yellow ball.
_RELATIONS_IT = {
    "left_of": ("to its left", "on its left", "left of it", "to the left of it", "on the left of it"),
    "right_of": ("to its right", "on its right", "right of it", "to the right of it",
                 "on the right of it"),
    "above": ("above it", "over it", "on top of it", "atop it"),
    "below": ("below it", "under it", "beneath it", "underneath it"),
    "beside": ("next to it", "beside it"),
}
_BACKGROUND_WORDS = ("background", "backdrop", "bg", "backgrounds", "canvas", "screen", "field",
                     "scene", "surface", "board", "plane", "setting", "ground color")
_ARTICLES = ("a", "an", "the", "another", "this", "that")
# Filler words: understood as carrying no content the evaluator checks.
_FILLER = set("""
and on of is are in with while as it its they them their each other then to from at into across
along toward towards by there that which who all together frame video clip shows showing shown
image picture we see seen view meanwhile but whereas also too just again around way side floor
ground apart out through be being been was were has have having does do very where here
scene simple plain solid flat colored coloured color colour bright dark light pale vivid deep
solid-colored object objects against onto upon within inside canvas animation animated
cartoon smoothly steady steadily constant constantly evenly straight directly uniformly
continuously linearly gentle across before after first later until when gets get getting
while whilst whole entire entirely completely half still's so such kind sort of itself
themselves both either another single slightly somewhat bit little something someone
shows depicts depicting featuring features feature displayed display appears appear
appearing seems visible can could will would should then next identical same matching
front moment briefly short off positioned located situated
middle center centre corner edge top bottom height high somewhere area spot position
set keeps keep kept very really quite extremely pretty rather super fairly
show animate render generate create draw make times once twice put while time for behind's equal equally alike similar
""".split())


def _build_lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    table.update(_entries("color", _COLORS))
    table.update(_entries("size", _SIZES))
    table.update(_entries("number", _NUMBERS))
    table.update(_entries("background", _BACKGROUNDS))
    table.update(_entries("speed", _SPEEDS))
    table.update(_entries("direction", _DIRECTIONS))
    table.update(_entries("dirverb", _DIRECTION_VERBS))
    table.update(_entries("gravity", _GRAVITY))
    table.update({p: ("still", "still") for p in _STILL})
    table.update({p: ("move", "move") for p in _MOVE})
    table.update({p: ("wall", "wall") for p in _WALL})
    table.update({p: ("occlusion", "occlusion") for p in _OCCLUSION})
    table.update({p: ("collision", "collision") for p in _COLLISION})
    table.update(_entries("relation", _RELATIONS))
    table.update(_entries("relation_it", _RELATIONS_IT))
    table.update({p: ("bgword", "bgword") for p in _BACKGROUND_WORDS})
    table.update({p: ("article", "article") for p in _ARTICLES})
    # Shapes come last so that "one" as a number ("one red ball") is decided by context below.
    for value, phrases in _SHAPES.items():
        for p in phrases:
            if p not in table:
                table[p] = ("shape", value)
    return {tuple(p.split()): v for p, v in table.items()}


_LEXICON = _build_lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}


def _singular(word: str) -> str | None:
    """'boxes' -> 'box', 'balls' -> 'ball' when the singular is a shape word, else None."""
    for cut in ("es", "s"):
        if word.endswith(cut) and len(word) > len(cut) + 2:
            stem = word[: -len(cut)]
            if _LEXICON.get((stem,), ("",))[0] == "shape":
                return stem
    return None


def _normalise(text: str) -> list[str]:
    text = text.lower()
    text = text.replace("grey", "gray").replace("colour", "color")
    text = re.sub(r"n't\b", " not", text)           # doesn't -> does not
    text = text.replace("can not", "cannot")
    text = re.sub(r"[-_/]", " ", text)               # left-to-right, red/blue
    text = re.sub(r"[^a-z0-9' ]+", " ", text)        # punctuation is not needed
    text = text.replace("'s", "").replace("'", "")
    words = text.split()
    # "does not move" after n't-splitting reads "does not move"; "doesnt" is a common typo.
    return [{"doesnt": "does", "dont": "do", "isnt": "is"}.get(w, w) for w in words]


@dataclass(frozen=True)
class _Token:
    kind: str      # color, shape, size, number, background, ...
    value: str
    text: str      # the words it came from
    plural: bool = False


def _tokenise(words: list[str]) -> tuple[list[_Token], list[str]]:
    tokens: list[_Token] = []
    unknown: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            key = tuple(words[i:i + n])
            if key in _LEXICON:
                kind, value = _LEXICON[key]
                tokens.append(_Token(kind, value, " ".join(key)))
                i += n
                break
        else:
            word = words[i]
            stem = _singular(word)
            if stem is not None:
                tokens.append(_Token("shape", _LEXICON[(stem,)][1], word, plural=True))
            elif word not in _FILLER:
                unknown.append(word)
            i += 1
    return tokens, unknown


# --- the parsed prompt -------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectSpec:
    """One object (or a group of identical objects) a prompt asks for. None = not specified."""
    color: str | None = None
    shape: str | None = None
    size: str | None = None
    motion: str | None = None     # one of MOTIONS
    speed: str | None = None      # a videodit.world.physics.SPEEDS key
    count: int | None = 1         # None = "two or more" (a plural without a number)


@dataclass(frozen=True)
class Relation:
    subject: int                  # index into ParsedPrompt.objects
    relation: str                 # one of RELATIONS
    object: int


@dataclass(frozen=True)
class ParsedPrompt:
    text: str
    family: str | None
    background: str | None
    objects: tuple[ObjectSpec, ...]
    relation: Relation | None = None
    unparsed: tuple[str, ...] = field(default=())   # words the parser did not understand

    @property
    def n_objects(self) -> int | None:
        """Total number of objects, None when a plural leaves it open."""
        counts = [o.count for o in self.objects]
        return None if any(c is None for c in counts) else sum(counts)

    def allowed_backgrounds(self) -> tuple[str, ...]:
        if self.background is not None:
            return (self.background,)
        if self.family == "occlusion":
            return WALL_BACKGROUNDS
        return BACKGROUND_NAMES

    def is_heldout(self, heldout_pairs) -> bool:
        pairs = {tuple(p) for p in heldout_pairs}
        return any((o.color, o.shape) in pairs for o in self.objects)

    def describe_unparsed(self) -> str:
        if not self.unparsed:
            return ""
        return f"could not parse {', '.join(repr(w) for w in self.unparsed)} in {self.text!r}"

    def canonical(self) -> str:
        """One full caption in the SynthWorld style ("A small red circle moves to the right on
        a black background."). Raises VideoditError when the prompt names no object."""
        if not self.objects:
            detail = f" (could not parse {', '.join(map(repr, self.unparsed))})" if self.unparsed else ""
            raise VideoditError(f"prompt {self.text!r}: names no object to show{detail}; "
                                f"try e.g. 'a red ball bouncing on a black background'")
        bg = f"on a {self.background} background" if self.background else ""
        if self.family == "collision" and len(self.objects) >= 2:
            a, b = (_noun_phrase(o, speed_adjective=True) for o in self.objects[:2])
            text = f"{a} and {_lower_article(b)} roll toward each other and bounce apart"
            return _sentence(text + (f", {bg}" if bg else ""))
        if self.family == "occlusion":
            o = self.objects[0]
            speed = f" {o.speed}" if o.speed in ("slowly", "quickly") else ""
            verb = (f"slides{speed} to the {o.motion}" if o.motion in ("left", "right")
                    else f"passes{speed}")
            text = f"{_noun_phrase(o)} {verb} behind a gray wall and comes out the other side"
            return _sentence(text + (f", {bg}" if bg else ""))
        if self.relation is not None and len(self.objects) >= 2:
            s, o = self.objects[self.relation.subject], self.objects[self.relation.object]
            words = {"left_of": "to the left of", "right_of": "to the right of", "above": "above",
                     "below": "below", "beside": "next to"}[self.relation.relation]
            text = f"{_noun_phrase(s)} is {words} {_lower_article(_noun_phrase(o))}"
            return _sentence(text + (f", {bg}" if bg else ""))
        clauses = [f"{_noun_phrase(o)} {_verb_phrase(o)}" for o in self.objects]
        if len(clauses) == 1:
            return _sentence(clauses[0] + (f" {bg}" if bg else ""))
        text = ", ".join(clauses[:-1]) + " and " + _lower_article(clauses[-1])
        return _sentence(text + (f", {bg}" if bg else ""))


_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}


def _noun_phrase(o: ObjectSpec, speed_adjective: bool = False) -> str:
    plural = o.count != 1
    number = "some" if o.count is None else _COUNT_WORDS.get(o.count, str(o.count))
    speed = {"slowly": "slow", "quickly": "fast"}.get(o.speed) if speed_adjective else None
    adjectives = [w for w in (o.size, speed, o.color) if w]
    noun = o.shape or "object"
    if o.count == 1:
        number = "an" if (adjectives + [noun])[0][0] in "aeiou" else "a"
    noun = noun + "s" if plural else noun
    return " ".join([number] + adjectives + [noun])


def _verb_phrase(o: ObjectSpec) -> str:
    plural = o.count != 1
    speed = f" {o.speed}" if o.speed in ("slowly", "quickly") else ""
    move = "move" if plural else "moves"
    be = "are" if plural else "is"
    return {
        None: f"{move}{speed}" if speed else ("are shown" if plural else "is shown"),
        "still": "stay still" if plural else "stays still",
        "left": f"{move}{speed} to the left",
        "right": f"{move}{speed} to the right",
        "up": f"{move}{speed} up",
        "down": f"{move}{speed} down",
        "falls": "fall" if plural else "falls",
        "bounces": "bounce" if plural else "bounces",
        "thrown_left": f"{be} thrown to the left",
        "thrown_right": f"{be} thrown to the right",
        "thrown": f"{be} thrown",
        "toward": f"{move} toward each other",
    }[o.motion]


def _lower_article(text: str) -> str:
    return text[0].lower() + text[1:]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# --- grammar -----------------------------------------------------------------------------------

_MENTION_KINDS = ("article", "number", "size", "color", "shape", "badcolor", "speedadj")
_MOTION_KINDS = ("direction", "dirverb", "gravity", "move", "still", "speed")
_SPEED_ADJECTIVES = ("slow", "fast", "quick", "rapid", "speedy", "swift", "slow moving",
                     "fast moving")
# Shape words used as adjectives: they do not end an object mention ("a round red thing").
_SHAPE_ADJECTIVES = ("round", "triangular")


@dataclass
class _Mention:
    tokens: list[_Token]
    after: list[_Token] = field(default_factory=list)   # what follows, up to the next mention

    def first(self, kind: str) -> str | None:
        return next((t.value for t in self.tokens if t.kind == kind), None)

    @property
    def color(self) -> str | None:
        return self.first("color")

    @property
    def shape(self) -> str | None:
        # "" = a shape-less word like "object"; "a round thing" names the shape once.
        return next((t.value for t in self.tokens if t.kind == "shape" and t.value), None)

    @property
    def plural(self) -> bool:
        return any(t.plural for t in self.tokens if t.kind == "shape")

    @property
    def count(self) -> int | None:
        number = self.first("number")
        if number == "many":
            return None
        if number is not None:
            return int(number)
        return None if self.plural else 1


def _split_mentions(tokens: list[_Token]) -> tuple[list[_Token], list[_Mention]]:
    """Group tokens into object mentions; returns (tokens before the first mention, mentions)."""
    lead: list[_Token] = []
    mentions: list[_Mention] = []
    run: list[_Token] = []

    def close_run() -> None:
        if any(t.kind in ("color", "shape") for t in run):
            mentions.append(_Mention(list(run)))
        else:   # "a" / "two" / "small" alone: nothing to show; keep them as plain tokens
            (mentions[-1].after if mentions else lead).extend(run)
        run.clear()

    for tok in tokens:
        if tok.kind in _MENTION_KINDS:
            # A new mention starts at an article/number after a shape, or at a second shape.
            has_shape = any(t.kind == "shape" and t.text not in _SHAPE_ADJECTIVES for t in run)
            if tok.kind == "shape" and (not tok.value or tok.text in _SHAPE_ADJECTIVES) \
                    and any(t.kind == "shape" for t in run):   # "a round thing", "ball-shaped"
                run.append(tok)
                continue
            has_color = any(t.kind == "color" for t in run)
            if run and (has_shape or (tok.kind == "color" and has_color)
                        or (tok.kind in ("article", "number") and has_color)):
                close_run()
            run.append(tok)
        else:
            if run:
                close_run()
            (mentions[-1].after if mentions else lead).append(tok)
    if run:
        close_run()
    return lead, mentions


def _motion_of(tokens: list[_Token], collision: bool) -> tuple[str | None, str | None]:
    """(motion, speed) from the tokens describing one object."""
    kinds = {t.kind for t in tokens}
    gravity = [t.value for t in tokens if t.kind == "gravity"]
    directions = [t.value for t in tokens if t.kind == "direction"]
    dirverbs = [t.value for t in tokens if t.kind == "dirverb"]
    speeds = [t.value for t in tokens if t.kind == "speed"]
    speed = speeds[-1] if speeds else None
    if collision:
        return "toward", speed
    if "thrown" in gravity:
        side = next((d for d in directions if d in ("left", "right")), None)
        return (f"thrown_{side}" if side else "thrown"), speed
    if "bounces" in gravity:
        return "bounces", speed
    if "falls" in gravity:
        return "falls", speed
    if directions:
        return directions[0], speed
    if dirverbs:
        return dirverbs[0], speed
    if "still" in kinds:
        return "still", speed
    # "moves quickly" without a direction: a speed but no direction.
    return None, speed


_OPPOSITE = {("left", "right"): "left_of", ("right", "left"): "right_of",
             ("up", "down"): "above", ("down", "up"): "below"}


def _positions(mentions: list[_Mention]) -> Relation | None:
    """"The red ball is on the left and the blue box on the right": opposite directions with no
    verb of motion are positions, i.e. a relation."""
    directions = []
    for m in mentions:
        kinds = {t.kind for t in m.after}
        if kinds & {"move", "dirverb", "gravity", "speed"}:
            return None
        found = [t.value for t in m.after if t.kind == "direction"]
        if len(found) != 1:
            return None
        directions.append(found[0])
    rel = _OPPOSITE.get(tuple(directions))
    return None if rel is None else Relation(0, rel, 1)


def _retag(tokens: list[_Token], unknown: list[str]) -> None:
    """Fix token kinds that depend on the next token, in place."""
    # "a fast red ball": a speed adjective belongs to the object it precedes.
    for i, tok in enumerate(tokens[:-1]):
        after_verb = i > 0 and tokens[i - 1].kind in _MOTION_KINDS
        if (tok.kind == "speed" and tok.text in _SPEED_ADJECTIVES and not after_verb
                and tokens[i + 1].kind in ("color", "size", "shape", "background")):
            tokens[i] = _Token("speedadj", tok.value, tok.text)
    # "gray boxes": a background colour used for an object. There are no gray objects; keep the
    # mention together and say what was not understood.
    for i, tok in enumerate(tokens[:-1]):
        if tok.kind == "background" and tokens[i + 1].kind in ("shape", "size"):
            tokens[i] = _Token("badcolor", tok.value, tok.text)
            unknown.append(f"{tok.text!r} is not an object colour (object colours: "
                           f"{', '.join(COLOR_NAMES)})")


def _merge_references(mentions: list[_Mention]) -> list[_Mention]:
    """"the square moves up" after "a red ball and a blue square": a reference, not a new object."""
    merged: list[_Mention] = []
    for m in mentions:
        ref = None
        if m.first("article") is not None and m.color is None and m.shape and m.count == 1:
            same = [p for p in merged if p.shape == m.shape]
            ref = same[0] if len(same) == 1 else None
        if ref is not None and any(t.value == "article" and t.text == "the" for t in m.tokens):
            ref.after.extend(m.after)
        else:
            merged.append(m)
    return merged


def _relation(lead: list[_Token], mentions: list[_Mention],
              collision: bool) -> tuple[Relation | None, bool]:
    """(relation, positional): a relation word between two mentions, or before both ("Above a
    blue square, ..."); positional when it came from where each object is ("on the left")."""
    relation = None
    for i, m in enumerate(mentions):
        rel = next((t.value for t in m.after if t.kind == "relation"), None)
        if rel is not None and i + 1 < len(mentions):
            relation = Relation(i, rel, i + 1)
            break
    if relation is None:
        for i, m in enumerate(mentions[1:], start=1):
            rel = next((t.value for t in m.after if t.kind == "relation_it"), None)
            if rel is not None:
                relation = Relation(i, rel, i - 1)
                break
    if relation is None and len(mentions) >= 2:
        rel = next((t.value for t in lead if t.kind == "relation"), None)
        if rel is not None:
            relation = Relation(1, rel, 0)
    positional = False
    if relation is None and len(mentions) == 2 and not collision:
        relation = _positions(mentions)
        positional = relation is not None
    if collision:
        return None, positional
    return relation, positional


def _object_specs(lead: list[_Token], mentions: list[_Mention], collision: bool,
                  relation: Relation | None, positional: bool) -> list[ObjectSpec]:
    # Motion: the tokens after each mention; words before the first mention ("bouncing red
    # ball") describe the first object.
    specs: list[ObjectSpec] = []
    for i, m in enumerate(mentions):
        describing = m.after + (lead if i == 0 else [])
        motion, speed = _motion_of(describing, collision)
        if positional:   # "on the left" said where the object is, not where it goes
            motion = "still"
        speed = m.first("speedadj") or speed
        size = m.first("size")
        specs.append(ObjectSpec(m.color, m.shape, size, motion, speed, m.count))
    # "A red square and a blue circle move up": an object with no words of its own shares the
    # motion of the next one.
    for i in range(len(specs) - 2, -1, -1):
        bare = all(t.kind in ("article",) for t in mentions[i].after)
        if specs[i].motion is None and specs[i].speed is None and bare and relation is None:
            nxt = specs[i + 1]
            specs[i] = ObjectSpec(specs[i].color, specs[i].shape, specs[i].size, nxt.motion,
                                  nxt.speed, specs[i].count)
    # Collision with one plural mention ("two balls roll toward each other"): two objects.
    if collision and len(specs) == 1 and specs[0].count in (None, 2):
        one = specs[0]
        specs = [ObjectSpec(one.color, one.shape, one.size, "toward", one.speed, 1)] * 2
    # Relation scenes are still unless the prompt says otherwise.
    if relation is not None:
        specs = [s if s.motion is not None else ObjectSpec(s.color, s.shape, s.size, "still",
                                                           s.speed, s.count) for s in specs]
    return specs


def _family(collision: bool, occlusion: bool, relation: Relation | None,
            specs: list[ObjectSpec]) -> str | None:
    if collision:
        return "collision"
    if occlusion:
        return "occlusion"
    if relation is not None:
        return "relation"
    if len(specs) == 1:
        return "single" if specs[0].count == 1 else "count"
    if len(specs) >= 2:
        return "pair"
    return None


def parse_prompt(text: str) -> ParsedPrompt:
    """Parse a SynthWorld prompt; see the module docstring. Never raises on odd text: the parts
    it could not understand are listed in ``unparsed``."""
    if not isinstance(text, str):
        raise VideoditError(f"prompt must be a string, got {type(text).__name__}")
    tokens, unknown = _tokenise(_normalise(text))
    _retag(tokens, unknown)
    lead, mentions = _split_mentions(tokens)
    mentions = _merge_references(mentions)

    all_tokens = lead + [t for m in mentions for t in m.tokens + m.after]
    kinds = {t.kind for t in all_tokens}
    collision = "collision" in kinds and not ("wall" in kinds or "occlusion" in kinds)
    occlusion = "wall" in kinds or "occlusion" in kinds

    # Background: a background colour word (gray before "wall" was already taken by the wall).
    backgrounds = [t.value for t in all_tokens if t.kind == "background"]
    background = backgrounds[-1] if backgrounds else None
    if len(set(backgrounds)) > 1:
        unknown.append(f"conflicting backgrounds {sorted(set(backgrounds))}")

    relation, positional = _relation(lead, mentions, collision)
    specs = _object_specs(lead, mentions, collision, relation, positional)
    family = _family(collision, occlusion, relation, specs)
    if background == "gray" and family == "occlusion":
        unknown.append("a gray background with a wall (walls appear only on black or white)")
    return ParsedPrompt(text=text, family=family, background=background, objects=tuple(specs),
                        relation=relation, unparsed=tuple(unknown))
