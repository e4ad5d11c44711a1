"""The `ofa-ve` command line: its subcommands, their flags and their help."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from ..classification import DEFAULT_HYPOTHESIS_TEMPLATE
from ..contract import DEFAULT_URL, MODEL_NAME
from .commands import (
    URL_ENV,
    cmd_batch,
    cmd_classify,
    cmd_evaluate,
    cmd_health,
    cmd_many,
    cmd_predict,
)


def _common_options(top_level: bool) -> argparse.ArgumentParser:
    """Connection and TLS flags, accepted before the subcommand and after it.

    The copy after the subcommand has no defaults (argparse would otherwise reset
    what was given before it) and keeps its repeatable flags apart, so that
    `--url A health --url B` means both A and B (see `merge_common`).
    """
    common = argparse.ArgumentParser(
        add_help=False, argument_default=None if top_level else argparse.SUPPRESS
    )

    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    def repeated(name: str) -> str:
        return name if top_level else f"{name}_after_command"

    conn = common.add_argument_group("connection")
    conn.add_argument(
        "--url",
        action="append",
        dest=repeated("url"),
        metavar="HOST:PORT",
        help=f"gRPC endpoint; repeat for round-robin and failover "
        f"(default: ${URL_ENV} or {DEFAULT_URL})",
    )
    conn.add_argument(
        "--model", default=default(MODEL_NAME), help=f"model name (default: {MODEL_NAME})"
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=default(60.0),
        help="deadline per request, seconds (default: 60)",
    )
    conn.add_argument(
        "--retries",
        type=int,
        default=default(4),
        help="retries on UNAVAILABLE/RESOURCE_EXHAUSTED (default: 4; 0 disables)",
    )
    conn.add_argument(
        "--header",
        action="append",
        dest=repeated("header"),
        metavar="KEY=VALUE",
        help="gRPC metadata on every call, e.g. authorization='Bearer TOKEN'",
    )
    conn.add_argument("--compression", choices=("gzip", "deflate"), help="request compression")
    tls = common.add_argument_group("TLS")
    tls.add_argument("--ssl", action="store_true", default=default(False), help="use TLS")
    tls.add_argument("--root-cert", metavar="PEM", help="CA certificate(s) to verify the server")
    tls.add_argument("--client-cert", metavar="PEM", help="client certificate chain (mutual TLS)")
    tls.add_argument("--client-key", metavar="PEM", help="client private key (mutual TLS)")
    tls.add_argument("--tls-server-name", metavar="NAME", help="name expected in the server cert")
    return common


def merge_common(args: argparse.Namespace) -> argparse.Namespace:
    """Repeatable flags given before and after the subcommand add up, in that order."""
    for name in ("url", "header"):
        after = getattr(args, f"{name}_after_command", None)
        if after:
            setattr(args, name, [*(getattr(args, name) or []), *after])
        if hasattr(args, f"{name}_after_command"):
            delattr(args, f"{name}_after_command")
    args.header = args.header or []
    return args


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """--progress / --no-progress; neither: a bar only when stderr is a terminal."""
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None,
        help="always show progress (default: only on a terminal)",
    )  # fmt: skip
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress"
    )


def add_command(
    sub: Any,
    name: str,
    handler: Any,
    common: argparse.ArgumentParser,
    **texts: str,
) -> argparse.ArgumentParser:
    """A subcommand that runs ``handler``, with the common flags and its ``help`` and
    ``description`` texts; the parser is kept on the parsed arguments for error messages."""
    command = sub.add_parser(name, parents=[common], **texts)
    command.set_defaults(handler=handler, subparser=command)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ofa-ve",
        description="Client for the OFA visual-entailment model on Triton (gRPC). "
        "Connection and TLS flags go before or after the command.",
        parents=[_common_options(top_level=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options(top_level=False)

    predict = add_command(
        sub,
        "predict",
        cmd_predict,
        common,
        help="judge one image and hypothesis; prints one JSON object",
        description="Judge one item and print {label, answer, score, probs} as JSON.",
    )
    predict.add_argument("image", help="image file path or http(s) URL")
    predict.add_argument("hypothesis", help="the sentence to judge")
    predict.add_argument("--premise", help="optional text premise")

    many = add_command(
        sub,
        "many",
        cmd_many,
        common,
        help="judge one image against several hypotheses; writes JSONL, one line each",
        description="The image is read once and the hypotheses are sent in as few requests "
        "as the model's max_batch_size allows. Each output line is {index, hypothesis} plus "
        "the prediction, or an `error` object for that hypothesis; the order is the "
        "command line's. Exit 1 if any hypothesis failed.",
    )
    many.add_argument("image", help="image file path or http(s) URL")
    many.add_argument("hypotheses", nargs="+", metavar="HYPOTHESIS", help="sentences to judge")
    many.add_argument("--premise", help="optional text premise, the same for every hypothesis")

    classify = add_command(
        sub,
        "classify",
        cmd_classify,
        common,
        help="zero-shot classify an image among candidate labels",
        description="Each LABEL becomes a hypothesis through --template; the labels are "
        "ranked by entailment. Single-label (default): scores are a softmax over the labels "
        "of log P(entailment) and sum to 1. --multi-label: each label's own P(entailment). "
        "Prints 'SCORE LABEL' lines, best first, or with --json one object "
        '{"image", "labels", "scores", "hypotheses", "multi_label", "premise"}.',
    )
    classify.add_argument("image", help="image file path or http(s) URL")
    classify.add_argument(
        "labels",
        nargs="+",
        metavar="LABEL",
        help="candidate labels (unique); a comma separates labels, as in the SDK's string "
        'of labels: "cat,dog" is two',
    )
    classify.add_argument(
        "--template",
        default=DEFAULT_HYPOTHESIS_TEMPLATE,
        help="hypothesis template with {} where the label goes (default: %(default)r)",
    )
    classify.add_argument(
        "--multi-label",
        action="store_true",
        help="score each label on its own (P(entailment)) instead of against each other",
    )
    classify.add_argument("--premise", help="optional text premise")
    classify.add_argument("--json", action="store_true", help="print one JSON object")

    batch = add_command(
        sub,
        "batch",
        cmd_batch,
        common,
        help="judge every row of a JSONL or CSV file; writes JSONL",
        description="Rows have image, hypothesis and optional premise: JSONL keys, or CSV "
        "columns named by a header row (any order) or, without one, in that order. Other "
        "columns (ids, gold labels) are kept and so are empty fields. Relative image paths "
        "are relative to the input file. Each output line is {index} plus every field of "
        "the row (a column named like an output key, e.g. `label`, as `input_label`), then "
        "the prediction or an `error` object; the order is the input order (with --resume, "
        "the kept lines first).",
    )
    batch.add_argument("input", help="input .jsonl or .csv file, or - for stdin")
    batch.add_argument("--output", "-o", default="-", help="output .jsonl (default: stdout)")
    batch.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="input format (default: by suffix; stdin: JSONL, with a hint when it is not)",
    )
    batch.add_argument(
        "--resume",
        action="store_true",
        help="keep the answered lines of an existing --output and send only the other rows",
    )
    batch.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="requests of --batch-size items in flight (default: 2). With the progress bar "
        "and no --batch-size, the same number of items go as single-item requests, so the "
        "bar moves item by item",
    )
    batch.add_argument(
        "--batch-size",
        type=int,
        help="items per request (default: the model's max_batch_size; 1 while the progress "
        "bar shows)",
    )
    add_progress_flags(batch)

    evaluate = add_command(
        sub,
        "evaluate",
        cmd_evaluate,
        common,
        help="accuracy on SNLI-VE (or any dataset in its formats) through the server",
        description="Sends every pair of an SNLI-VE file through the server and scores the "
        "answers against the gold labels: accuracy (percent), per-class precision, recall "
        "and F1, the confusion matrix and throughput. DATA is SNLI-VE's own JSONL "
        "(snli_ve_{train,dev,test}.jsonl, with --images the Flickr30k image folder) or "
        "OFA's SNLI-VE TSV (images inline as base64). Every prediction goes to --out (CSV), "
        "written as it comes, so an interrupted run continues with --resume. The report "
        "goes to stdout (--json: the JSON summary instead); the summary is also written "
        "beside --out (or to --summary). Exit 1 if any pair failed.",
    )
    evaluate.add_argument("data", metavar="JSONL_OR_TSV", help="the dataset file")
    evaluate.add_argument("--images", metavar="DIR", help="Flickr30k image folder (JSONL)")
    evaluate.add_argument("--format", choices=("jsonl", "tsv"), help="default: by suffix")
    evaluate.add_argument("--out", metavar="PREDICTIONS.csv", help="write every prediction")
    evaluate.add_argument(
        "--summary", metavar="SUMMARY.json", help="default: PREDICTIONS.summary.json"
    )
    evaluate.add_argument(
        "--resume",
        action="store_true",
        help="keep the answered rows of an existing --out and send only the rest",
    )
    evaluate.add_argument("--limit", type=int, help="only the first N pairs of the file")
    evaluate.add_argument(
        "--with-caption",
        action="store_true",
        help="send the text premise too (JSONL sentence1, TSV caption); the card's "
        "figures are for the image alone",
    )
    evaluate.add_argument(
        "--concurrency", type=int, default=2, help="requests in flight (default: 2)"
    )
    evaluate.add_argument(
        "--batch-size", type=int, help="pairs per request (default: the model's max_batch_size)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the JSON summary")
    add_progress_flags(evaluate)

    add_command(
        sub,
        "health",
        cmd_health,
        common,
        help="liveness, readiness and model readiness of each server (JSON)",
        description="Prints per-server health as JSON; exit 0 when the model is ready somewhere.",
    )
    return parser
