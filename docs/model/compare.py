"""Per-metric accuracy of two `videodit eval --json` runs over their first N videos, side by side
(e.g. canonical captions vs docs/model/phrasings.txt, same scenes and seeds):

    python docs/model/compare.py runs/eval300.json runs/eval_phr.json 50
"""
import json
import sys

a, b = (json.load(open(p))["videos"] for p in sys.argv[1:3])
n = int(sys.argv[3]) if len(sys.argv) > 3 else min(len(a), len(b))
a, b = a[:n], b[:n]


def accuracy(videos):
    out = {}
    names = dict.fromkeys(name for v in videos for name in v["metrics"])
    for name in names:
        passed = [v["metrics"][name]["passed"] for v in videos
                  if name in v["metrics"] and v["metrics"][name].get("passed") is not None]
        if passed:
            out[name] = (sum(passed) / len(passed), len(passed))
    return out


acc_a, acc_b = accuracy(a), accuracy(b)
print(f"{'metric':<12} {sys.argv[1]:>22} {sys.argv[2]:>22}   diff")
diffs = []
for name in acc_a:
    if name in acc_b:
        (x, nx), (y, ny) = acc_a[name], acc_b[name]
        diffs.append(y - x)
        print(f"{name:<12} {x:>16.3f} n={nx:<4} {y:>16.3f} n={ny:<4} {y - x:+.3f}")
mean_a = sum(v for v, _ in acc_a.values()) / len(acc_a)
mean_b = sum(v for v, _ in acc_b.values()) / len(acc_b)
print(f"{'mean':<12} {mean_a:>22.3f} {mean_b:>22.3f} {mean_b - mean_a:+.3f}")
