"""`ofa-ve`: predict one item, one image against many hypotheses, zero-shot classify,
run a JSONL/CSV file, evaluate on SNLI-VE, or check server health.

Exit codes: 0 success; 1 a request (or, for `batch`, `many` and `evaluate`, some item) failed,
or the server is not ready (`health`); 2 bad command line.

Modules: `parser` (the flags), `commands` (what each command does), `batch_io`
(`batch`'s rows), `evaluation` (`evaluate`'s datasets and scores).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import VisualEntailmentError
from .commands import print_json
from .parser import build_parser, merge_common


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = merge_common(parser.parse_args(argv))
    try:
        return args.handler(args, args.subparser)
    except VisualEntailmentError as exc:
        print_json({"error": exc.to_dict()}, sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
