"""WebDataset shards against the in-memory and the folder loader on MNIST: the stream's memory does not grow with
the data; its images/s; how soon its first batch comes.

Writes MNIST (data.name=mnist) as shards of 5,000 images with tools/make_shards.py and as a folder of PNG files,
then measures one pass of the training loader (batch 128, shuffled, data.num_workers auto), each in a process
of its own: (a) the peak RSS of the process and of its largest DataLoader worker over 2 shards (10,000 images)
and over the same list 10 times (100,000): the stream's must stay within 10 %, while the in-memory loader's grows
with its images; (b) images/s over the training split (54,000 images) of the shards, of the in-memory loader and
of the folder loader (data.max_memory_mb=0: files decoded by DataLoader workers); (c) the seconds from loading
the split to the first batch. Prints a table, with the date, the CPU cores and the load, for docs/data.md.

    python benchmarks/shards.py                                   # MNIST from ../shared/datasets
    python benchmarks/shards.py --work checkpoints/shards-bench  # keep the written files for a second run
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402

BATCH = 128
SHARD_SIZE = 5000
SMALL_SHARDS = 2  # (a): 2 shards, 10,000 images, read once and 10 times over
TOLERANCE = 0.10  # (a): the stream's peak RSS over 10x the images, at most this much above 1x's


def configs(work: Path, data_root: str) -> dict[str, list[str]]:
    """The config overrides of each loader measured."""
    return {"shards": ["data.name=shards", f"data.root={work / 'shards'}"],
            "memory": ["data.name=mnist", f"data.root={data_root}", f"data.cache_dir={work / 'cache'}"],
            "folder": ["data.name=folder", f"data.root={work / 'folder'}", "data.channels=1", "data.image_size=28",
                       "data.max_memory_mb=0"]}


def write_data(work: Path, data_root: str) -> dict[str, float]:
    """The shards (tools/make_shards.py) and the folder of PNG files, unless work has them; seconds each took."""
    from PIL import Image

    from engine.config import load_config
    from engine.datasets import load_split

    seconds = {}
    if not (work / "shards" / "index.json").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), "--out", str(work / "shards"),
                        "--shard-size", str(SHARD_SIZE), "data.name=mnist", f"data.root={data_root}",
                        f"data.cache_dir={work / 'cache'}"], check=True, cwd=ROOT)
        seconds["write shards"] = time.perf_counter() - start
    if not (work / "folder" / "test").is_dir():
        start = time.perf_counter()
        cfg = load_config(None, configs(work, data_root)["memory"])
        for split in ("train", "test"):
            images, labels = load_split(cfg.data, split)
            for i, (image, label) in enumerate(zip(images, labels.tolist())):
                folder = work / "folder.tmp" / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
        (work / "folder.tmp").rename(work / "folder")
        seconds["write folder"] = time.perf_counter() - start
    return seconds


class WorkerPeak(threading.Thread):
    """The largest peak RSS (VmHWM, kB) among this process's children (DataLoader workers), read from /proc every
    50 ms while they live: getrusage's RUSAGE_CHILDREN would also count children of the process's past."""

    def __init__(self):
        super().__init__(daemon=True)
        self.kb, self.done = 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for pid in children():
                self.kb = max(self.kb, peak_kb(pid))


def children() -> list[str]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except OSError:  # the thread ended
            pass
    return pids


def peak_kb(pid: str = "self") -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the worker ended
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def measure(kind: str, work: Path, data_root: str, repeat: int) -> dict:
    """One pass of kind's training loader in this process: images/s, first batch s, peak RSS (MB) of the process
    and of its largest worker. repeat > 0: (a)'s 2 shards' images (10,000), repeat times over."""
    import torch

    from engine.config import load_config
    from engine.datasets import describe, load_split
    from engine.datasource import Stream
    from engine.loaders import Batching, Loader, StreamLoader, num_workers

    cfg = load_config(None, configs(work, data_root)[kind])
    info = replace(describe(cfg.data), mean=[0.1307], std=[0.3081])
    start = time.perf_counter()
    images, labels = load_split(cfg.data, "train")
    batching = Batching(BATCH, 0, num_workers=num_workers(cfg.data))
    if isinstance(images, Stream):
        if repeat:
            images = replace(images, urls=images.urls[:SMALL_SHARDS] * repeat,
                             counts=images.counts[:SMALL_SHARDS] * repeat)
        loader = StreamLoader(images, batching, info, torch.device("cpu"))
    else:
        if repeat:
            images, labels = images[:SMALL_SHARDS * SHARD_SIZE].repeat(repeat, 1, 1, 1), labels[
                :SMALL_SHARDS * SHARD_SIZE].repeat(repeat)
        loader = Loader(images, labels, batching, info, torch.device("cpu"))
    loader.set_epoch(1)
    seen, first, workers = 0, None, WorkerPeak()
    workers.start()
    for _, batch_labels in loader:
        first = first or time.perf_counter() - start
        seen += len(batch_labels)
    seconds = time.perf_counter() - start
    workers.done.set()
    workers.join()
    return {"images": seen, "images/s": seen / seconds, "first batch s": first, "rss MB": peak_kb() / 1024,
            "worker rss MB": workers.kb / 1024}


def in_child(kind: str, work: Path, data_root: str, repeat: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(repeat), "--work", str(work), "--root", data_root]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"error: measuring {kind} failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(work: Path, data_root: str, written: dict) -> None:
    load = os.getloadavg()
    speed = {kind: in_child(kind, work, data_root) for kind in ("shards", "memory", "folder")}
    memory = {(kind, k): in_child(kind, work, data_root, k) for kind in ("shards", "memory") for k in (1, 10)}
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, load average {load[0]:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after, batch {BATCH}, {' '.join(f'{k} {v:.0f}s' for k, v in written.items())}")
    print("| loader | images/s (54,000) | first batch s | peak RSS 1x / 10x MB | largest worker 1x / 10x MB |")
    print("| --- | --- | --- | --- | --- |")
    for kind, row in speed.items():
        rss, workers = (" / ".join(f"{memory[(kind, k)][key]:.0f}" if (kind, k) in memory and memory[(kind, k)][key]
                                   else "-" for k in (1, 10)) for key in ("rss MB", "worker rss MB"))
        print(f"| {kind} | {row['images/s']:,.0f} | {row['first batch s']:.2f} | {rss} | {workers} |")
    one, ten = memory[("shards", 1)], memory[("shards", 10)]
    grew = max(ten["rss MB"] / one["rss MB"], ten["worker rss MB"] / one["worker rss MB"]) - 1
    print(f"(a) shards over {ten['images']:,} images vs {one['images']:,}: peak RSS {100 * grew:+.1f}% "
          f"({'within' if grew <= TOLERANCE else 'OVER'} {100 * TOLERANCE:.0f}%)")
    if grew > TOLERANCE:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets", help="the folder holding MNIST/raw (data.root)")
    parser.add_argument("--work", help="where to write the shards and the folder (default: a temporary folder)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_root = str(Path(args.root).resolve())
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.work), data_root, int(args.child[1]))))
        return
    if not (Path(data_root) / "MNIST").is_dir():
        print(f"skipped: {Path(data_root) / 'MNIST'} is absent; pass --root where MNIST/raw is")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report(work, data_root, write_data(work, data_root))


if __name__ == "__main__":
    run_cli(main)
