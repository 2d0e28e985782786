"""A long fuzzing pass: the property-based tests of tests/test_fuzz.py and tests/test_fuzz_inputs.py with fresh
random cases, many more than the suite runs. Prints how many generated cases each property checked and every
finding (a failing property with Hypothesis's smallest example); exits 1 if there is any.

    python benchmarks/fuzz.py                      # about 10,500 cases: 2,000 per quick property, 100 per slow one
    python benchmarks/fuzz.py --quick 200 --slow 20

Quick properties read configs, images and ONNX files in-process; slow ones run a script per case (test.py
--predict, train.py for one tiny epoch). Each pass is one pytest process with FUZZ_EXAMPLES set; this file is
also its pytest plugin, which counts the calls of the check functions the properties share.
"""
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402

# (pytest -k expression, which examples count) per pass
QUICK = "yaml or overrides or image or onnx"
SLOW = "file_name or checkpoint_dict or command_lines"
CHECKS = re.compile(r"^(check_\w+|loads_or_refuses)$")  # the functions every generated case goes through
COUNTS_FILE = "FUZZ_COUNTS_FILE"
counts: collections.Counter = collections.Counter()


def pytest_collection_modifyitems(items) -> None:
    """Plugin hook: wrap each test module's check functions so that every generated case is counted."""
    for module in {item.module for item in items}:
        for name in [n for n in vars(module) if CHECKS.match(n) and callable(vars(module)[n])]:
            setattr(module, name, counting(vars(module)[name], f"{Path(module.__file__).stem}.{name}"))


def counting(check, name: str):
    def run(*args, **kwargs):
        counts[name] += 1
        return check(*args, **kwargs)
    return run


def pytest_sessionfinish(session) -> None:
    """Plugin hook: hand the counts to the parent process."""
    if os.environ.get(COUNTS_FILE):
        Path(os.environ[COUNTS_FILE]).write_text(json.dumps(counts))


def run_pass(expression: str, examples: int, out: Path) -> tuple[dict, list[str], float]:
    """One pytest process on the fuzz tests selected by expression: (cases per check, findings, seconds)."""
    counts_file = out / f"counts-{examples}.json"
    env = {**os.environ, "FUZZ_EXAMPLES": str(examples), COUNTS_FILE: str(counts_file),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "fuzz", "-p",
                             "no:cacheprovider", "-p", "no:warnings", "-k", expression, "tests/test_fuzz.py",
                             "tests/test_fuzz_inputs.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    found = json.loads(counts_file.read_text()) if counts_file.is_file() else {}
    lines = result.stdout.splitlines()
    findings = [line for line in lines if line.startswith(("FAILED", "ERROR"))]  # one per failing property
    if result.returncode not in (0, 5) and not findings:
        findings = [f"pytest exited {result.returncode}: {lines[-1:]}"]
    cases = [f"{line.strip()} {lines[i + 1].strip()} {lines[i + 2].strip()}" for i, line in enumerate(lines[:-2])
             if "Failing test case" in line]  # Hypothesis's smallest example of each
    return found, findings + cases, seconds


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--quick", type=int, default=2000, help="random cases per quick property (default 2000)")
    parser.add_argument("--slow", type=int, default=100, help="random cases per slow property (default 100)")
    args = parser.parse_args(argv)
    out = ROOT / "checkpoints" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    total, findings = collections.Counter(), []
    print("| pass | examples per property | cases | seconds | findings |\n| --- | --- | --- | --- | --- |")
    for name, expression, examples in (("quick", QUICK, args.quick), ("slow", SLOW, args.slow)):
        found, problems, seconds = run_pass(expression, examples, out)
        total.update(found)
        findings += problems
        failed = sum(p.startswith(("FAILED", "ERROR", "pytest exited")) for p in problems)
        print(f"| {name} | {examples:,} | {sum(found.values()):,} | {seconds:.0f} | {failed} |")
    for check, cases in sorted(total.items()):
        print(f"{check}: {cases:,} cases")
    failed = [line for line in findings if line.startswith(("FAILED", "ERROR", "pytest exited"))]
    print(f"total: {sum(total.values()):,} generated cases, {len(failed)} failing properties")
    for line in findings:
        print(f"  {line}")
    return 1 if findings else 0


if __name__ == "__main__":
    run_cli(main)
