"""Per-family accuracy and the held-out 'colour and shape both right' rate from a
`videodit eval --json` file:  python docs/model/joint.py runs/eval300.json"""
import json
import sys
from collections import defaultdict

import numpy as np

d = json.load(open(sys.argv[1]))
rng = np.random.default_rng(0)


def rate(values):
    values = np.asarray(values, dtype=float)
    if not len(values):
        return "n=0"
    boots = rng.choice(values, size=(2000, len(values))).mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return f"{values.mean():.3f} [{lo:.3f}, {hi:.3f}] n={len(values)}"


for split in (False, True):
    both = [v["metrics"]["color"]["passed"] and v["metrics"]["shape"]["passed"] for v in d["videos"]
            if v["heldout"] == split and v["metrics"].get("color", {}).get("passed") is not None
            and v["metrics"].get("shape", {}).get("passed") is not None]
    print(("held-out" if split else "in-distribution"), "colour and shape both right:", rate(both))
by_family = defaultdict(list)
for v in d["videos"]:
    checked = [m["passed"] for m in v["metrics"].values() if m.get("passed") is not None]
    if checked:
        by_family[v["family"]].append(np.mean(checked))
for family, scores in sorted(by_family.items()):
    print(f"family {family}: mean metric pass rate {rate(scores)}")
