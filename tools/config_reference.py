"""Write docs/config.md's table of every key from config.yaml's comments, where each key is documented once.

    python tools/config_reference.py          # after adding or changing a key's line in config.yaml
    python tools/config_reference.py --check  # exit 1 if the page is out of date (tests/test_docs.py checks it)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine.cli import run_cli  # noqa: E402
from engine.config import key_reference  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.storage import write_text  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"
START = "<!-- every key: written by tools/config_reference.py from config.yaml; edit config.yaml, not this table -->"
END = "<!-- end of every key -->"


def with_reference(page: str) -> str:
    """The page with the text between its START and END lines replaced by the current table."""
    before, found, rest = page.partition(START)
    _, found_end, after = rest.partition(END)
    if not found or not found_end:
        raise UserError(f"{PAGE} lacks the lines {START} and {END} around the table; put them back")
    return f"{before}{START}\n{key_reference()}\n{END}{after}"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that the page is current")
    args = parser.parse_args(argv)
    page = PAGE.read_text(encoding="utf-8")
    if with_reference(page) == page:
        print(f"{PAGE.name} is current")
    elif args.check:
        print(f"{PAGE.name} is out of date: run python tools/config_reference.py")
        raise SystemExit(1)
    else:
        write_text(PAGE, with_reference(page))
        print(f"wrote the key table of {PAGE.name}")


if __name__ == "__main__":
    run_cli(main)
