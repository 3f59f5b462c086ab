"""Summarise py-spy ``--format raw`` profiles (collapsed stacks) as text.

    python -m bench.spy_summary FILE [FILE...] [--top 25] [--match relay/]

Prints, over all samples: the share of samples that were idle (the event loop waiting in
``select``/``epoll``), the functions with the most *self* samples, and the functions whose
file matches ``--match`` with the most *inclusive* samples (where the time goes, by relay's own
functions).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
IDLE = ("select (selectors.py", "poll (selectors.py", "_run_once (asyncio/base_events.py")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def load(paths: list[Path]) -> list[tuple[list[str], int]]:
    stacks = []
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_short(f) for f in stack.split(";") if f]
            stacks.append((frames, int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int, match: str) -> str:
    total = sum(c for _, c in stacks) or 1
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    idle = 0
    for frames, count in stacks:
        leaf = frames[-1] if frames else "?"
        self_t[leaf] += count
        if any(leaf.startswith(i.split(" (")[0] + " (") and i.split("(")[1] in leaf for i in IDLE):
            idle += count
        for f in set(frames):
            if match in f:
                incl[f] += count
    out = [
        f"samples: {total}; idle in the event loop's poll: {100 * idle / total:.1f}%",
        "",
        f"top {top} by self samples:",
    ]
    for f, c in self_t.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    out += ["", f"top {top} by inclusive samples, frames matching {match!r}:"]
    for f, c in incl.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="relay/")
    args = ap.parse_args()
    print(summarise(load(args.files), args.top, args.match))


if __name__ == "__main__":
    main()
