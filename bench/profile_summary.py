"""`python -m bench.profile_summary FILE [--top N] [--match TEXT]`: the hottest functions of a py-spy profile.

Reads the collapsed stacks `python -m bench --profile DIR` writes (one `frame;frame;... count` a line) and
prints, per function, the share of samples it was on the stack (inclusive) and at the top (self).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)$")


def function_of(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`: every line of a function counts as the function."""
    name, _, where = frame.partition(" (")
    file = LINE_NUMBER.sub(")", "(" + where).strip("()")
    return f"{name} ({Path(file).name})" if file else name


def summarize(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(frame) for frame in stack.split(";")]
        total += count
        for function in set(functions):
            inclusive[function] += count
        own[functions[-1]] += count
    return total, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only functions whose name or file contains this")
    args = parser.parse_args()
    total, inclusive, own = summarize(args.file)
    print(f"{args.file}: {total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title:>9} %  function")
        shown = [(f, n) for f, n in counter.most_common() if args.match in f][: args.top]
        for function, count in shown:
            print(f"{100 * count / max(total, 1):10.1f}  {function}")


if __name__ == "__main__":
    main()
