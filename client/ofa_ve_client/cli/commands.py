"""What each `ofa-ve` command does (the flags are in parser.py)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..classification import ZeroShotQuery, split_labels
from ..contract import DEFAULT_URL
from ..errors import InvalidInputError, VisualEntailmentError

URL_ENV = "OFA_VE_URL"  # comma-separated HOST:PORT list, the default for --url


def _headers(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            parser.error(f"--header expects KEY=VALUE, got {pair!r}")
        headers[key.strip()] = value
    return headers


def make_client(args: argparse.Namespace, parser: argparse.ArgumentParser, **extra: Any) -> Any:
    """A VisualEntailmentClient from the common flags (imported here: `--help` stays instant)."""
    from ..retry import RetryPolicy
    from ..sync_client import VisualEntailmentClient

    urls = args.url or [u for u in os.environ.get(URL_ENV, DEFAULT_URL).split(",") if u.strip()]
    tls_files = (args.root_cert, args.client_cert, args.client_key, args.tls_server_name)
    try:
        return VisualEntailmentClient(
            urls,
            model_name=args.model,
            timeout=args.timeout,
            retry=RetryPolicy(max_attempts=args.retries + 1),
            headers=_headers(args.header, parser),
            compression_algorithm=args.compression,
            ssl=args.ssl or any(v is not None for v in tls_files),
            root_certificates=args.root_cert,
            certificate_chain=args.client_cert,
            private_key=args.client_key,
            tls_server_name=args.tls_server_name,
            **extra,
        )
    except ValueError as exc:
        parser.error(str(exc))


def print_json(obj: Any, stream: Any = None) -> None:
    print(json.dumps(obj, ensure_ascii=False), file=stream or sys.stdout, flush=True)


def cmd_predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    with make_client(args, parser) as client:
        try:
            prediction = client.predict(args.image, args.hypothesis, args.premise)
        except VisualEntailmentError as exc:
            print_json({"error": exc.to_dict()}, sys.stderr)
            return 1
    print_json(prediction.to_dict())
    return 0


def cmd_many(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    with make_client(args, parser) as client:
        try:
            results = client.predict_many(
                args.image, args.hypotheses, args.premise, return_exceptions=True
            )
        except VisualEntailmentError as exc:  # the image or the premise: every item's problem
            print_json({"error": exc.to_dict()}, sys.stderr)
            return 1
    failed = 0
    for index, (hypothesis, result) in enumerate(zip(args.hypotheses, results, strict=True)):
        record: dict[str, Any] = {"index": index, "hypothesis": hypothesis}
        if isinstance(result, VisualEntailmentError):
            failed += 1
            record["error"] = result.to_dict()
        else:
            record.update(result.to_dict())
        print_json(record)
    return 1 if failed else 0


def cmd_classify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # The SDK's rule for a string of labels holds for each argument: "cat,dog" is two.
    labels = [label for arg in args.labels for label in split_labels(arg)]
    try:  # bad labels or template are a usage error: found before connecting
        ZeroShotQuery.build(labels, args.template, args.multi_label, args.premise)
    except InvalidInputError as exc:
        parser.error(exc.message)
    with make_client(args, parser) as client:
        try:
            result = client.classify(
                args.image,
                labels,
                args.template,
                args.multi_label,
                premise=args.premise,
            )
        except VisualEntailmentError as exc:
            print_json({"error": exc.to_dict()}, sys.stderr)
            return 1
    if args.json:
        print_json({"image": args.image, **result.to_dict()})
    else:
        for label, score in zip(result.labels, result.scores, strict=True):
            print(f"{score:.4f}  {label}")
    return 0


def cmd_health(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    with make_client(args, parser) as client:
        servers = client.health()
        ready = any(s["model_ready"] for s in servers)
        report: dict[str, Any] = {"ready": ready, "model": args.model, "servers": servers}
        if ready:
            try:
                report["max_batch_size"] = client.max_batch_size()
                report["server"] = {
                    k: v for k, v in client.server_metadata().items() if k in ("name", "version")
                }
            except VisualEntailmentError as exc:
                report["error"] = exc.to_dict()
    print_json(report)
    return 0 if ready else 1


def cmd_batch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import batch_io

    if args.concurrency < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--concurrency and --batch-size must be >= 1")
    if args.resume and args.output == "-":
        parser.error("--resume needs --output (the JSONL file to continue)")
    try:
        fmt = batch_io.detect_format(args.input, args.format)
        source = batch_io.open_text(args.input, "r", sys.stdin)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    lines: Iterable[str] = source
    if args.input == "-" and args.format is None:
        sniffed, lines = batch_io.peek_format(source)
        if sniffed is None:
            parser.error(
                "stdin is not JSONL (its first line does not start with '{'); "
                "for CSV give --format csv"
            )
    done = batch_io.read_done(args.output) if args.resume else {}
    try:
        kept = done.values() if args.resume else None
        sink = batch_io.start_output(args.output, kept, sys.stdout)
    except OSError as exc:
        parser.error(str(exc))
    base = Path(args.input).resolve().parent if args.input != "-" else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    ok = failed = resumed = 0
    seen = -1
    with make_client(args, parser, concurrency=args.concurrency) as client, source:
        bar = progress_bar(show, batch_io.count_rows(args.input, fmt) if show else None)
        try:
            batch_size, concurrency = args.batch_size, args.concurrency
            if show and batch_size is None:
                # Progress per item: an answer per request. As many items stay in flight
                # as with full requests, and Triton's batcher still forms the batches
                # (at some cost in throughput on CPU: docs/client.md).
                batch_size, concurrency = 1, args.concurrency * client.max_batch_size()
            rows = batch_io.read_rows(lines, fmt)
            # Windows bound memory; each one keeps `concurrency` requests in flight.
            window = max(256, 4 * concurrency * (batch_size or 32))
            while chunk := list(itertools.islice(rows, window)):
                seen = chunk[-1].index
                todo = [r for r in chunk if r.index not in done]
                resumed += len(chunk) - len(todo)
                usable = [r for r in todo if r.error is None]
                results = client.predict_batch(
                    [batch_io.item_of(r, base) for r in usable],
                    return_exceptions=True,
                    batch_size=batch_size,
                    concurrency=concurrency,
                    progress=bar.update,
                )
                by_index = {r.index: res for r, res in zip(usable, results, strict=True)}
                bar.update(len(chunk) - len(usable))
                for row in todo:
                    result = row.error or by_index[row.index]
                    failed += isinstance(result, VisualEntailmentError)
                    ok += not isinstance(result, VisualEntailmentError)
                    print_json(batch_io.output_record(row, result), sink)
        finally:
            bar.close()
            if sink is not sys.stdout:
                sink.close()
    kept = f", {resumed} kept from {args.output}" if args.resume else ""
    print(f"ofa-ve batch: {ok} ok, {failed} failed{kept}", file=sys.stderr)
    beyond = sum(1 for index in done if index > seen)
    if beyond:
        print(
            f"warning: {beyond} answered lines of {args.output} have an index past the "
            f"input's last row ({seen}): kept in the file (another input?)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import csv
    import time

    from . import evaluation as ev

    if args.concurrency < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--concurrency and --batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    data = Path(args.data)
    images = Path(args.images) if args.images else None
    out = Path(args.out) if args.out else None
    try:
        fmt = ev.detect_format(data, args.format)
    except ValueError as exc:
        parser.error(str(exc))
    if not data.is_file():
        parser.error(f"no such dataset file: {data}")
    with open(data, "rb") as head:
        if head.read(2) == ev.GZIP_MAGIC:
            parser.error(f"{data} is gzip-compressed: decompress it first (gunzip -k)")
    if images is not None and not images.is_dir():
        parser.error(f"--images {images} is not a folder")
    if fmt == "jsonl" and images is None:
        parser.error("a JSONL dataset names Flickr30k images: give their folder with --images")
    if args.resume and out is None:
        parser.error("--resume needs --out (the predictions file to continue)")
    if out is not None and not args.resume and ev.has_predictions(out):
        parser.error(f"{out} exists: --resume to continue it, or remove it")
    summary_path = Path(args.summary) if args.summary else None
    if summary_path is None and out is not None:
        summary_path = out.with_name(out.stem + ".summary.json")

    done = ev.read_done(out) if args.resume and out is not None else {}
    scores = ev.Scores()  # kept rows count as their pairs are met in the dataset
    failures: list[tuple[str, str]] = []  # the first few, for stderr
    show = sys.stderr.isatty() if args.progress is None else args.progress
    total = ev.count_pairs(data) if show else None
    if total is not None and args.limit is not None:
        total = min(total, args.limit)
    pairs = itertools.islice(ev.read_pairs(data, fmt, images, args.with_caption), args.limit)
    sink = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        # The answers kept from an earlier run (its failures dropped) go to a new file
        # that replaces the old one whole, so an interruption here loses nothing.
        fresh = out.with_name(out.name + ".tmp")
        with open(fresh, "w", encoding="utf-8", newline="") as start:
            kept = csv.DictWriter(start, fieldnames=ev.PREDICTION_COLUMNS)
            kept.writeheader()
            kept.writerows(done.values())
        os.replace(fresh, out)
        sink = open(out, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    writer = csv.DictWriter(sink, fieldnames=ev.PREDICTION_COLUMNS) if sink else None
    count = sent = resumed = written = 0
    seconds = 0.0
    finished = False
    with make_client(args, parser, concurrency=args.concurrency) as client:
        bar = progress_bar(show, total)
        try:
            window = max(256, 4 * args.concurrency * (args.batch_size or 32))
            while chunk := list(itertools.islice(pairs, window)):
                count += len(chunk)
                todo = [p for p in chunk if p.pair_id not in done]
                resumed += len(chunk) - len(todo)
                ev.score_rows([done[p.pair_id] for p in chunk if p.pair_id in done], scores)
                sendable = [p for p in todo if p.problem is None]
                started = time.perf_counter()
                results = client.predict_batch(
                    [(p.image, p.hypothesis, p.premise) for p in sendable],
                    return_exceptions=True,
                    batch_size=args.batch_size,
                    progress=bar.update,
                )
                seconds += time.perf_counter() - started
                sent += len(sendable)
                bar.update(len(chunk) - len(sendable))
                answers = iter(results)
                for pair in todo:
                    result = ev.problem_error(pair) if pair.problem else next(answers)
                    if isinstance(result, VisualEntailmentError) or pair.gold is None:
                        scores.errors += 1
                        if len(failures) < 5:
                            failed = isinstance(result, VisualEntailmentError)
                            failures.append((pair.pair_id, str(result) if failed else "no gold"))
                    else:
                        scores.add(pair.gold, result.label)
                    if writer is not None:
                        writer.writerow(ev.prediction_row(pair, result))
                        written += 1
                if sink is not None:
                    sink.flush()
            finished = True
        finally:
            bar.close()
            if sink is not None:
                sink.close()
                if out is not None and not finished and not written and not done:
                    out.unlink(missing_ok=True)  # a run that answered nothing leaves no file
    summary = {
        "dataset": str(data),
        "format": fmt,
        "model": args.model,
        "with_caption": args.with_caption,
        "pairs": count,
        "sent": sent,
        "resumed": resumed,
        "seconds": seconds,
        "throughput_pairs_per_s": sent / seconds if seconds else 0.0,
        "predictions": str(out) if out else None,
        "scores": scores.to_dict(),
    }
    unmatched = len(done) - resumed
    if unmatched > 0:
        summary["kept_not_in_dataset"] = unmatched
    if summary_path is not None:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print_json(summary)
    else:
        print(ev.format_report(summary), flush=True)
    if unmatched > 0:
        print(
            f"warning: {unmatched} answered rows of {out} are not pairs of {data} (another "
            "dataset, or past --limit): kept in the file, not scored",
            file=sys.stderr,
        )
    for pair_id, reason in failures:
        print(f"failed: {pair_id}: {reason}", file=sys.stderr)
    if scores.errors > len(failures):
        where = f" (all in {out})" if out is not None else " (--out writes every one)"
        print(f"... {scores.errors - len(failures)} more failed{where}", file=sys.stderr)
    return 1 if scores.errors else 0


def progress_bar(enabled: bool, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="item", file=sys.stderr, dynamic_ncols=True)
