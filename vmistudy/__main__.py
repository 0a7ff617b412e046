"""The commands of this project, one line each: `python -m vmistudy` (or --help).

Each line is the headline of the command's docstring (its first paragraph, up to a colon), read from its source
file, so the list is never staler than the commands' own --help, and fast: importing the commands would load
torch, Ray and MLflow.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {"vmistudy": HERE, "benchmarks": HERE.parent / "benchmarks"}  # benchmarks/: in a checkout only


def commands() -> dict[str, str]:
    """{module: its summary} for every module of PACKAGES that runs as a command (has a __main__ block)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("[!_]*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
                   for node in tree.body):
                summary = (ast.get_docstring(tree) or "").split("\n\n")[0].split(": ")[0]
                found[f"{package}.{path.stem}"] = " ".join(summary.split()).rstrip(".")
    return found


def listing() -> str:
    found = commands()
    column = max(len(f"python -m {name}") for name in found) + 2
    return "\n".join(["Commands (each with --help: its options and examples):", "",
                      *(f"  {f'python -m {name}':{column}}{summary}" for name, summary in found.items())])


def main(argv: list[str]) -> int:
    if argv not in ([], ["-h"], ["--help"]):
        print(f"error: python -m vmistudy takes no arguments (got {' '.join(argv)}); run a command as "
              "python -m <command>, listed by python -m vmistudy", file=sys.stderr)
        return 2
    print(listing())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
