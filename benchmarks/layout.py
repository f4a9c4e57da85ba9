"""Code layout: module sizes, long functions and the import graph's cycles and upward arrows.

    python benchmarks/layout.py [--root DIR] [--over 60]

`--root` is a checkout (default: this one), so an older tree can be measured the same way
(`git worktree add /tmp/old <commit>`, then `--root /tmp/old`). The layers and the allowlist are the ones
`tests/test_layout.py` enforces; this prints what the test checks, plus functions over `--over` lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the layout code the guard test uses

from test_layout import (  # noqa: E402
    MAX_FUNCTION_LINES,
    MAX_MODULE_LINES,
    cycles,
    functions,
    import_graph,
    layer_violations,
    module_sizes,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--over", type=int, default=60, help="list functions longer than this")
    args = parser.parse_args()
    package = args.root / "headprof"

    sizes = module_sizes(package)
    print(f"modules over {MAX_MODULE_LINES} lines (largest 12 shown with them):")
    for name, lines in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {lines:5d} {name}{'  <- over' if lines > MAX_MODULE_LINES else ''}")
    print(f"  {sum(n > MAX_MODULE_LINES for n in sizes.values())} over, {len(sizes)} modules")

    long = [f for f in functions(package) if f[2] > args.over]
    over_max = sum(f[2] > MAX_FUNCTION_LINES for f in long)
    print(f"functions over {args.over} lines ({over_max} over {MAX_FUNCTION_LINES}):")
    for module, name, lines in sorted(long, key=lambda f: -f[2]):
        print(f"  {lines:5d} {module}:{name}")

    graph = import_graph(package)
    found = cycles(graph)
    print(f"import cycles ({len(found)}):")
    for cycle in found:
        print("  " + " -> ".join([*cycle, cycle[0]]))
    upward = layer_violations(graph)
    print(f"imports from a lower layer to a higher one ({len(upward)}):")
    for source, target in upward:
        print(f"  {source} -> {target}")


if __name__ == "__main__":
    main()
