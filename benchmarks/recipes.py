"""Run the recipes in configs/ and print what each reaches: test accuracy, time, speed, memory, and how
close it comes to the machine's floor.

Each recipe runs as `python train.py --config configs/<name>.yaml` in its own process (so its
peak memory is its own), with data.root and run.output_dir set from the arguments below.

The floor is arithmetic: forward FLOPs per image (counted by torch.utils.flop_counter.FlopCounterMode)
x 3 (forward and backward) x images trained, divided by 60 % of the conv throughput this machine
reaches on a large conv in the recipe's precision (float32, or bf16 where run.amp resolves to it), measured
before and after the runs. "x floor" is the measured training time over it.

    python benchmarks/recipes.py --root ../shared/datasets                     # every recipe
    python benchmarks/recipes.py --root ../shared/datasets --only mnist
    python benchmarks/recipes.py --only cifar10 --cifar10-folder ../shared/datasets/cifar10-jpg
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.config import load_config  # noqa: E402
from engine.datasets import describe  # noqa: E402
from engine.devices import has_native_bf16  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from model import build_model  # noqa: E402

FLOOR_SHARE = 0.6  # of the large conv's throughput: what a well-fed recipe can sustain
OWN_IMAGES = ("finetune", "photos")  # recipes for your own images: benchmarks/transfer.py and photos.py
# one recipe per data set, and mnist_speedrun
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem not in OWN_IMAGES)


def recipe_overrides(name: str, args: argparse.Namespace) -> list[str]:
    """Where the data is, where runs go, and any extra overrides."""
    overrides = [f"run.output_dir={args.output_dir}", f"run.name=recipe-{name}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if name.startswith("cifar10") and args.cifar10_folder:  # the JPEG folder copy instead of torchvision's binary files
        overrides += ["data.name=folder", f"data.root={args.cifar10_folder}"]
    elif name != "digits":
        overrides.append(f"data.root={args.root}")
    return overrides + args.overrides


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    """Train one recipe in a child process; read its numbers from what train.py prints and writes."""
    command = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{name}.yaml"),
               *recipe_overrides(name, args)]
    print(f"$ {' '.join(command)}", flush=True)
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith(("epoch", "test", "amp", "error")):
            print("  " + line.rstrip(), flush=True)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak resident memory
    out = "".join(lines)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: recipe {name} failed:\n{out[-2000:]}")
    seconds = sum(float(s) for s in re.findall(r"^epoch .*?\s([\d.]+)s(?:  \*best)?$", out, re.M))
    epochs = len(re.findall(r"^epoch ", out, re.M))
    train_images = int(re.search(r"(\d+) train / \d+ val images", out)[1])
    tta = re.search(r"^test .*with tta \S+ ([\d.]+)%", out, re.M)
    return {"data set": name, "model": re.search(r"^model: (\w+)", out, re.M)[1],
            "epochs": epochs, "test acc": float(re.search(r"^test .*accuracy ([\d.]+)%", out, re.M)[1]),
            "tta acc": float(tta[1]) if tta else None,
            "train s": seconds, "images/s": epochs * train_images / seconds,
            "peak GB": usage.ru_maxrss / 2 ** 20, "amp": re.search(r"^amp: \w+ -> (\w+)", out, re.M)[1],
            "device": device_name(re.search(r"^device: (\S+)", out, re.M)[1])}


def forward_flops(name: str, args: argparse.Namespace) -> float:
    """FLOPs of one image's forward pass through the recipe's model (training mode, as it trains)."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", recipe_overrides(name, args))
    info = describe(cfg.data)
    model = build_model(cfg.model, info.in_channels, len(info.class_names), info.image_size)
    images = torch.zeros(2, info.in_channels, info.image_size, info.image_size)  # 2: batch norm needs two
    with FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 2


def precisions() -> dict[str, torch.dtype | None]:
    """run.amp's resolved values -> autocast dtype, for the precisions this CPU runs natively."""
    return {"none": None, **({"bf16": torch.bfloat16} if has_native_bf16(torch.device("cpu")) else {})}


def conv_throughput(dtype: torch.dtype | None, rounds: int = 5) -> float:
    """FLOP/s of a large 3x3 conv's forward pass on this machine, in float32 or under autocast to dtype: the median
    of a few rounds, in the faster of the two memory layouts (channels_last is oneDNN's own)."""
    return max(layout_throughput(rounds, layout, dtype) for layout in (torch.contiguous_format, torch.channels_last))


def layout_throughput(rounds: int, layout: torch.memory_format, dtype: torch.dtype | None) -> float:
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=layout)
    images = torch.randn(64, 128, 32, 32).to(memory_format=layout)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        with FlopCounterMode(display=False) as counter:
            conv(images)
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            conv(images)
            rates.append(counter.get_total_flops() / (time.perf_counter() - start))
    return sorted(rates)[rounds // 2]


def with_floor(row: dict, flops: float, throughput: float) -> dict:
    """Add MFLOP/image, achieved GFLOP/s, share of the conv throughput, floor seconds and measured / floor."""
    trained = 3 * flops * row["images/s"] * row["train s"]  # forward + backward over every image trained
    floor = trained / (FLOOR_SHARE * throughput)
    return {**row, "MFLOP/img": flops / 1e6, "GFLOP/s": trained / row["train s"] / 1e9,
            "share": trained / row["train s"] / throughput, "floor s": floor, "x floor": row["train s"] / floor}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    model = re.search(r"model name\s*: (.*)", cpuinfo.read_text()) if cpuinfo.exists() else None
    return f"cpu ({model[1].strip() if model else 'unknown'}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=RECIPES, help="run this recipe only")
    parser.add_argument("--root", default="data", help="data.root for the torchvision data sets")
    parser.add_argument("--cifar10-folder", help="train cifar10 from this JPEG folder copy (train/, test/)")
    parser.add_argument("--output-dir", default="checkpoints/recipes", help="run.output_dir for the runs")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every recipe, e.g. run.threads=1")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else RECIPES
    before = {amp: conv_throughput(dtype) for amp, dtype in precisions().items()}
    runs = [(run_recipe(name, args), forward_flops(name, args)) for name in names]
    after = {amp: conv_throughput(dtype) for amp, dtype in precisions().items()}  # the load may have changed
    throughput = {amp: (before[amp] + after[amp]) / 2 for amp in before}
    rows = [with_floor(row, flops, throughput.get(row["amp"], throughput["none"])) for row, flops in runs]
    rates = ", ".join(f"{rate / 1e9:.0f} GFLOP/s {'float32' if amp == 'none' else amp}"
                      for amp, rate in throughput.items())
    print(f"\n{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} at the end, large-conv throughput "
          f"{rates} (each row's floor uses its own precision's), overrides: {' '.join(args.overrides) or 'none'}")
    print("| data set | model | epochs | test acc | with TTA | train s | images/s | MFLOP/img | GFLOP/s | share "
          "| floor s | x floor | peak GB | amp | device |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        tta = f"{r['tta acc']:.2f}%" if r["tta acc"] is not None else "-"
        print(f"| {r['data set']} | {r['model']} | {r['epochs']} | {r['test acc']:.2f}% | {tta} | {r['train s']:.0f} | "
              f"{r['images/s']:,.0f} | {r['MFLOP/img']:.1f} | {r['GFLOP/s']:.1f} | {100 * r['share']:.0f}% | "
              f"{r['floor s']:.0f} | {r['x floor']:.2f} | {r['peak GB']:.2f} | {r['amp']} | {r['device']} |")


if __name__ == "__main__":
    run_cli(main)
