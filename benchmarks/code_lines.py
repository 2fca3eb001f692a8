"""Count code lines: lines holding code, not blank lines, comments or docstrings.

    python benchmarks/code_lines.py                      # the model folder (config + modeling + image processing)
    python benchmarks/code_lines.py --finetuning         # the fine-tuning modules (target: at most 2,000)
    python benchmarks/code_lines.py path/to/file.py ...  # any files

A line counts when a token other than a comment sits on it; a docstring (a string that is a whole statement) never
counts. This is the measure behind the "model folder <= 500 code lines" target in UPSTREAMING.md and the "fine-tuning
modules <= 2,000 code lines" target of issue 20.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path


MODEL_FOLDER = (
    "mask2former_dinov3/configuration_mask2former_dinov3.py",
    "mask2former_dinov3/modeling_mask2former_dinov3.py",
    "mask2former_dinov3/image_processing_mask2former_dinov3.py",
)
# What run_instance_seg.py runs: arguments, the run, data, Trainer subclass and metrics.
FINETUNING = (
    "mask2former_dinov3/data.py",
    "mask2former_dinov3/arguments.py",
    "mask2former_dinov3/finetune.py",
    "mask2former_dinov3/training.py",
    "mask2former_dinov3/metrics.py",
)
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
             tokenize.ENDMARKER}  # fmt: skip


def code_lines(source: str) -> int:
    """Number of lines of `source` that hold code (no blank, comment-only or docstring lines)."""
    docstring_lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstring_lines.update(range(node.lineno, node.end_lineno + 1))
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstring_lines)


def main(argv: list[str]) -> int:
    """Print each file's code lines and the total."""
    root = Path(__file__).resolve().parent.parent
    if argv == ["--finetuning"]:
        argv = [str(root / p) for p in FINETUNING]
    paths = [Path(p) for p in argv] or [root / p for p in MODEL_FOLDER]
    total = 0
    for path in paths:
        count = code_lines(path.read_text(encoding="utf-8"))
        total += count
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        print(f"{count:6d}  {shown}")
    print(f"{total:6d}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
