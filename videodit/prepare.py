"""`videodit prepare SRC -o CACHE`: your own captioned videos -> a cache of normalised VAE latents
and text embeddings that `videodit train` reads (videodit/data/prepared.py). docs/OWN_DATA.md.

Sources (videodit/data/sources.py) are made into clips in worker processes
(videodit/data/clips.py); the main process encodes each clip alone with the frozen VAE and its
caption alone with the text encoder (so a sample's tensors do not depend on its neighbours) and
writes them, in source order, into shards of ``shard_size`` samples:

  CACHE/shard-00000.safetensors   latent.{i} bf16 (c, T, h, w), normalised (vae.normalize(vae.encode(x)));
                                  text.{i} bf16 (L, D), the caption's L tokens (no padding);
                                  metadata "videodit": JSON {key, first, stop, samples, skipped}:
                                  the sources [first, stop) it covers, what it kept, what it skipped
  CACHE/report.json               {"kept": [paths], "skipped": {path: reason}, "ignored": {suffix: n}}
  CACHE/index.json                written last: settings, VAE config + weights hash, text encoder,
                                  shards, and per sample {shard, key, path, start, caption, bucket}

Every file is written to a temporary name and renamed, so a kill -9 leaves whole shards: a
rerun with the same settings keeps them, goes on from the first source they do not cover and
writes the same cache an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from videodit.config import add_dataclass_args, check_ranges, dataclass_from_args, existing, to_dict
from videodit.errors import VideoditError

INDEX, REPORT, META_KEY, FORMAT = "index.json", "report.json", "videodit", 1

_EXAMPLES = """examples:
  videodit prepare my_videos/ --check                    # list what would be skipped, and why
  videodit prepare my_videos/ -o cache/ --sizes 64x64 96x64 64x96 --workers 2
  videodit prepare clips.csv -o cache/                   # rows: path,caption[,start,end]
  videodit world render --n 100 --out sw && rm sw/*.txt && \\
    videodit prepare sw -o cache/ --captioner videodit.data.sources:synthworld_caption
  videodit prepare my_videos/ -o cache/ --captioner-cmd "python my_captioner.py"

A video's caption is the .txt file of the same name; videos without one are captioned by
--captioner / --captioner-cmd, or skipped. Every skipped file is named with its reason."""


@dataclass(frozen=True)
class PrepareConfig:
    vae: str = field(default="", metadata={
        "help": "VAE bundle folder (empty = the bundled VAE)", "path": "dir", "group": "encoders"})
    text_encoder: str = field(default="all-minilm-l6-v2", metadata={
        "help": "text encoder: the bundled 'all-minilm-l6-v2' or a local Hugging Face folder", "group": "encoders"})
    workers: int = field(default=2, metadata={
        "help": "processes decoding and resizing videos (0 = in the main process)", "min": 0, "group": "run"})
    shard_size: int = field(default=256, metadata={"help": "samples per shard file", "min": 1, "group": "run"})
    captioner: str = field(default="", metadata={
        "help": "MODULE:FUNCTION taking a video path and returning its caption, for videos without a .txt "
                "(SynthWorld's: videodit.data.sources:synthworld_caption)", "group": "captions"})
    captioner_cmd: str = field(default="", metadata={
        "help": "a command given the video path as its last argument, printing the caption, for videos "
                "without a .txt", "group": "captions"})


def register(sub: argparse._SubParsersAction) -> None:
    from videodit.data.clips import ClipConfig

    p = sub.add_parser("prepare", description="Prepare your own captioned videos for training: clips resampled "
                       "and resized to size buckets, encoded by the frozen VAE and text encoder into a cache "
                       "(docs/OWN_DATA.md).", epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=existing(), help="a folder of videos / images with same-name .txt captions, "
                   "or a .csv / .jsonl list of path,caption[,start,end]")
    p.add_argument("-o", "--out", help="cache folder to write (created; a rerun resumes)")
    p.add_argument("--check", action="store_true", help="only list what would be kept and skipped (decodes, "
                   "encodes nothing, writes nothing)")
    add_dataclass_args(p, ClipConfig)
    add_dataclass_args(p, PrepareConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from videodit.data.clips import ClipConfig

    clip_cfg = dataclass_from_args(ClipConfig(), args)
    cfg = dataclass_from_args(PrepareConfig(), args)
    if not args.check and not args.out:
        raise VideoditError("give -o CACHE (the folder to write), or --check to only list the files")
    prepare(args.src, args.out, clip_cfg, cfg, check=args.check)
    return 0


# ---------------------------------------------------------------------------------------------
# Worker side: one source -> a clip or a skip reason (module-level for process pools)

_captioner = None


def _init_worker(captioner) -> None:
    global _captioner
    _captioner = captioner.load() if captioner else None


def _work(job):
    """(position, Source, ClipConfig, run the captioner) -> (position, result): a dict with the
    clip, or (kind, reason)."""
    from videodit.data.clips import Skip, make_clip

    position, source, clip_cfg, captioning = job
    try:
        clip = make_clip(source.path, clip_cfg, source.start, source.end)
        caption = source.caption
        if caption is None and _captioner is not None and captioning:
            try:
                caption = " ".join(str(_captioner(source.path)).split())
            except Exception as e:  # a user's captioner: whatever it raises is that file's reason
                raise Skip("captioner failed", f"captioner failed: {' '.join(str(e).split()) or type(e).__name__}")
            if not caption:
                raise Skip("captioner failed", "the captioner returned an empty caption")
        if caption is None and _captioner is None:
            raise Skip("no caption", f"no caption (no {Path(source.path).with_suffix('.txt').name}; give "
                                     "--captioner or --captioner-cmd to caption such videos)")
        if caption == "":
            raise Skip("no caption", "empty caption")
        return position, {"frames": clip.frames, "start": clip.start, "bucket": clip.bucket, "caption": caption}
    except Skip as s:
        return position, (s.kind, s.reason)


def _results(jobs: list, workers: int, captioner):
    """(position, result) in job order, from ``workers`` processes (0: this one)."""
    if not workers:
        _init_worker(captioner)
        yield from map(_work, jobs)
        return
    import multiprocessing

    # spawn: the main process holds torch and its threads, which do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (captioner,)) as pool:
        yield from pool.imap(_work, jobs, chunksize=1)


# ---------------------------------------------------------------------------------------------
# Main side


def source_name(source) -> str:
    """How reports name a source: its path, and its list row for sources from a list."""
    return f"{source.path} ({source.origin})" if source.origin else source.path


@dataclass
class Report:
    kept: list[dict]               # per sample: shard, key, path, start, caption, bucket
    skipped: dict[str, str]        # source name -> reason
    kinds: dict[str, int]          # skip kind -> count
    ignored: dict[str, int]        # non-media suffix -> count
    bytes_per_sample: float = 0.0
    seconds: float = 0.0


def prepare(src: str | Path, out: str | Path | None, clip_cfg, cfg: PrepareConfig = PrepareConfig(),
            check: bool = False, progress: bool = True) -> Report:
    """Prepare SRC into the cache folder ``out`` (or, with ``check``, only list what would be
    kept and skipped). Returns the report; prints the summary and every skipped file."""
    from videodit.data.clips import SKIP_KINDS

    started = time.time()
    listing, captioner, vae_dir, settings, key = _plan(src, clip_cfg, cfg, check)
    sources = listing.sources
    out = Path(out) if out else None
    kept: list[dict] = []
    skipped: dict[str, str] = dict(listing.skipped)
    kinds = dict.fromkeys(SKIP_KINDS, 0)
    kinds["bad list row"] = len(listing.skipped)
    shards: list[dict] = []
    encoders = None
    if check:
        position = 0
    else:
        out.mkdir(parents=True, exist_ok=True)
        index = _read_finished(out, key)
        if index is not None:
            print(f"{out}: already prepared with these settings and sources; nothing to do")
            return _summarise(out, index, listing.ignored, time.time() - started)
        position, shards = _resume(out, key, kept, skipped, kinds)
        encoders = _load_encoders(vae_dir, cfg.text_encoder)
        settings["text_encoder"]["dim"] = encoders[1].dim
    state = (out, key, shards, kept, skipped, kinds)
    pending = _process(sources, position, clip_cfg, cfg, captioner, encoders, state, progress)
    # Sources after the last shard that were all skipped live in the index alone (a rerun
    # re-reads them: cheap, and the same answer).
    skipped.update(pending["skipped"])
    for kind, n in pending["kinds"].items():
        kinds[kind] += n
    if check:
        report = Report(kept, skipped, kinds, listing.ignored, seconds=time.time() - started)
        _print_summary(report, None)
        return report
    index = {**settings, "key": key, "fps": clip_cfg.fps, "frames": clip_cfg.frames, "shards": shards,
             "samples": kept, "skipped": skipped, "skip_kinds": kinds, "ignored": listing.ignored}
    del index["sources"], index["list_skipped"]
    _write_json(out / REPORT, {"kept": [s["path"] for s in kept], "skipped": skipped, "ignored": listing.ignored})
    _write_json(out / INDEX, index)
    return _summarise(out, index, listing.ignored, time.time() - started)


def _plan(src, clip_cfg, cfg: PrepareConfig, check: bool):
    """Check the settings, list the sources; returns them with the captioner, the VAE folder, the
    settings recorded in the index and their hash (the key a rerun must match)."""
    from videodit.bundle import BUNDLED, file_sha256, read_bundle_config
    from videodit.data.sources import Captioner, list_sources
    from videodit.vae import VAEConfig

    check_ranges(clip_cfg)
    clip_cfg.check()
    check_ranges(cfg)
    captioner = Captioner(cfg.captioner, cfg.captioner_cmd)
    if captioner.function:
        from videodit.data.sources import load_function
        load_function(captioner.function)  # a bad spec fails here, once, not per file
    vae_dir = Path(cfg.vae) if cfg.vae else BUNDLED / "vae"
    vae_cfg = read_bundle_config(VAEConfig, vae_dir, "VAE")
    stride = vae_cfg.spatial_stride
    for w, h in clip_cfg.shapes:
        if w % stride or h % stride:
            raise VideoditError(f"--sizes {w}x{h}: width and height must be multiples of the VAE's spatial "
                                f"stride {stride} (nearest below: {w // stride * stride}x{h // stride * stride})")
    listing = list_sources(src)
    settings = {
        "format": FORMAT, "clips": to_dict(clip_cfg), "captioner": captioner.describe() if captioner else "",
        "vae": {"config": to_dict(vae_cfg), "sha256": file_sha256(vae_dir / "model.safetensors")},
        "text_encoder": {"name": cfg.text_encoder},
        "sources": [dataclasses.astuple(s) for s in listing.sources], "list_skipped": listing.skipped,
    }
    if not check:
        from videodit.text import TextEncoderConfig
        settings["text_encoder"]["max_length"] = TextEncoderConfig(model=cfg.text_encoder).max_length
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return listing, captioner, vae_dir, settings, key


def _process(sources, position: int, clip_cfg, cfg: PrepareConfig, captioner, encoders, state, progress: bool) -> dict:
    """Decode (in workers) and encode every source from ``position`` on, flushing a shard every
    ``cfg.shard_size`` kept samples; returns what is left pending (the skips after the last shard).
    Without ``encoders`` (--check) only the kept list is filled."""
    from tqdm import tqdm

    out, key, shards, kept, skipped, kinds = state
    check = encoders is None
    pending: dict = {"tensors": {}, "samples": [], "skipped": {}, "kinds": {}, "first": position}
    jobs = [(i, sources[i], clip_cfg, not check) for i in range(position, len(sources))]
    with tqdm(total=len(sources), initial=position, desc="prepare", unit="clip", disable=not progress,
              dynamic_ncols=True) as bar:
        for i, result in _results(jobs, cfg.workers, captioner):
            name = source_name(sources[i])
            if isinstance(result, tuple):
                kind, reason = result
                pending["skipped"][name] = reason
                pending["kinds"][kind] = pending["kinds"].get(kind, 0) + 1
            elif check:
                kept.append({"path": name, "start": result["start"], "bucket": result["bucket"]})
            else:
                n = len(kept) + len(pending["samples"])
                latent, tokens = _encode(*encoders, result["frames"], result["caption"])
                pending["tensors"][f"latent.{n}"] = latent
                pending["tensors"][f"text.{n}"] = tokens
                pending["samples"].append({"key": str(n), "path": name, "start": round(result["start"], 6),
                                           "caption": result["caption"], "bucket": result["bucket"]})
                if len(pending["samples"]) == cfg.shard_size:
                    _flush(out, key, pending, i + 1, shards, kept, skipped, kinds)
            bar.update(1)
    if not check and pending["samples"]:
        _flush(out, key, pending, len(sources), shards, kept, skipped, kinds)
    return pending


def _load_encoders(vae_dir: Path, text_encoder: str):
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.vae import VideoVAE

    vae = VideoVAE.from_pretrained(vae_dir).requires_grad_(False)
    return vae, TextEncoder(TextEncoderConfig(model=text_encoder))


def _encode(vae, text, frames, caption: str):
    """uint8 (F, H, W, 3) and a caption -> latent bf16 (c, T, h, w), tokens bf16 (L, D)."""
    import torch

    from videodit.video import frames_to_tensor

    x = frames_to_tensor(frames)[None]  # (1, 3, F, H, W)
    with torch.no_grad():
        latent = vae.normalize(vae.encode(x))[0]  # (c, T, h, w)
    tokens, mask = text.encode([caption])  # (1, L, D), (1, L): one prompt, no padding
    return latent.to(torch.bfloat16).contiguous(), tokens[0][mask[0]].to(torch.bfloat16).contiguous()


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _flush(out: Path, key: str, pending: dict, stop: int, shards: list, kept: list, skipped: dict,
           kinds: dict) -> None:
    """Write the pending samples as the next shard, atomically, covering sources [first, stop)."""
    from safetensors.torch import save_file

    name = _shard_name(len(shards))
    meta = {"key": key, "first": pending["first"], "stop": stop, "samples": pending["samples"],
            "skipped": pending["skipped"], "kinds": pending["kinds"]}
    tmp = out / (name + ".tmp")
    save_file(pending["tensors"], str(tmp), metadata={META_KEY: json.dumps(meta)})
    _fsync_replace(tmp, out / name)
    _adopt(name, meta, out, shards, kept, skipped, kinds)
    pending.update(tensors={}, samples=[], skipped={}, kinds={}, first=stop)


def _adopt(name: str, meta: dict, out: Path, shards: list, kept: list, skipped: dict, kinds: dict) -> None:
    shards.append({"file": name, "bytes": (out / name).stat().st_size, "first": meta["first"], "stop": meta["stop"]})
    kept.extend({"shard": name, **s} for s in meta["samples"])
    skipped.update(meta["skipped"])
    for kind, n in meta["kinds"].items():
        kinds[kind] += n


def _resume(out: Path, key: str, kept: list, skipped: dict, kinds: dict) -> tuple[int, list]:
    """Adopt the shards a previous run with the same settings finished; returns the first source
    position they do not cover, and the shards."""
    from safetensors import safe_open

    for stale in out.glob("*.tmp"):
        stale.unlink()  # a write a kill cut short
    shards: list = []
    position = 0
    for k, path in enumerate(sorted(out.glob("shard-*.safetensors"))):
        if path.name != _shard_name(k):
            raise VideoditError(f"{path}: unexpected shard name (expected {_shard_name(k)}); {out} is not a cache "
                                "this command wrote; use another -o folder")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})[META_KEY])
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise VideoditError(f"{path}: damaged shard ({' '.join(str(e).split())}); delete it and rerun") from None
        if meta.get("key") != key or meta.get("first") != position:
            raise VideoditError(f"{out}: holds a cache prepared from other sources or settings; use another -o "
                                "folder, or delete it to prepare again")
        _adopt(path.name, meta, out, shards, kept, skipped, kinds)
        position = meta["stop"]
    if shards:
        print(f"resuming: {len(shards)} shard(s) with {len(kept)} samples already written")
    return position, shards


def _read_finished(out: Path, key: str) -> dict | None:
    path = out / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if index.get("key") != key:
        raise VideoditError(f"{out}: holds a cache prepared from other sources or settings; use another -o "
                            "folder, or delete it to prepare again")
    return index


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    _fsync_replace(tmp, path)


def _summarise(out: Path, index: dict, ignored: dict, seconds: float) -> Report:
    total = sum(s["bytes"] for s in index["shards"])
    n = len(index["samples"])
    report = Report(index["samples"], index["skipped"], index["skip_kinds"], ignored,
                    bytes_per_sample=total / n if n else 0.0, seconds=seconds)
    _print_summary(report, out)
    return report


def _print_summary(report: Report, out: Path | None) -> None:
    buckets: dict[str, int] = {}
    for s in report.kept:
        buckets[s["bucket"]] = buckets.get(s["bucket"], 0) + 1
    verb = "kept" if out else "would keep"
    line = f"{verb} {len(report.kept)} samples"
    if buckets:
        line += " (" + ", ".join(f"{b}: {n}" for b, n in sorted(buckets.items())) + ")"
    if out is not None:
        line += f" in {out}, {report.bytes_per_sample / 1024:.1f} KiB per sample"
    print(f"{line}; {report.seconds:.1f} s")
    if report.ignored:
        print("not media, ignored: " + ", ".join(f"{n} {s}" for s, n in sorted(report.ignored.items())))
    counts = [f"{kind} {n}" for kind, n in report.kinds.items() if n]
    if report.skipped:
        print(f"skipped {len(report.skipped)}: " + ", ".join(counts))
        for name, reason in report.skipped.items():
            print(f"skipped {name}: {reason}")
    sys.stdout.flush()
