"""Classify your own images with a trained run: per-image top-k classes as CSV or JSON.

    python tools/predict.py --model-dir output/run --images photos/ --classnames names.txt
    python tools/predict.py --model-dir RUN --images a.jpg b.png --classnames names.txt \\
        --topk 3 --format json --output predictions.json

--classnames: a text file with one class name per line (blank lines skipped). A folder given to
--images contributes its image files (sorted by name, not recursive). A *Diff run samples each
image's prompt, so a prediction depends on the image's position in the list, as in --eval-only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(items: list[str]) -> list[str]:
    """Files as given, folders expanded to their image files sorted by name."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(item, name))
            )
            if not found:
                raise ValueError(
                    f"Folder {item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})."
                )
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"Image {item} does not exist; check --images.")
    return paths


def read_classnames(path: str) -> list[str]:
    """One class name per line; an empty list is an error naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class-name file {path} does not exist; check --classnames.")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"Class-name file {path} is empty; write one class name per line.")
    return names


def top_k(probs, classnames: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per image, the k most probable (class name, probability), most probable first."""
    k = max(1, min(k, len(classnames)))
    values, indices = probs.topk(k, dim=-1)
    return [
        [(classnames[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
        for row_p, row_i in zip(values, indices)
    ]


def render(paths: list[str], tops: list[list[tuple[str, float]]], fmt: str) -> str:
    if fmt == "json":
        records = [
            {"image": p, "top": [{"class": c, "probability": v} for c, v in top]}
            for p, top in zip(paths, tops)
        ]
        # strict JSON: a NaN would be written as the bare word NaN, which parsers reject
        return json.dumps(records, indent=2, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "probability"])
    for p, top in zip(paths, tops):
        for rank, (c, v) in enumerate(top, 1):
            writer.writerow([p, rank, c, f"{v:.6f}"])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a run folder train.py trained into")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--classnames", required=True, help="text file, one class name per line")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--output", default="", help="write here instead of stdout")
    parser.add_argument("--load-epoch", type=int, default=None, help="default: the last saved")
    return parser


def run_tool(parser: argparse.ArgumentParser, argv: list[str] | None, body) -> int:
    """Parse argv, check --topk, write body(args)'s text to --output (atomically) or stdout; a
    user error is one `error:` line and exit status 1 (the tools over a run folder share this)."""
    from promptdiff.engine.utils import USER_ERRORS, atomic_write, report_error

    args = parser.parse_args(argv)
    try:
        if args.topk < 1:
            raise ValueError(f"--topk must be >= 1 (got {args.topk}).")
        text = body(args)
        if args.output:
            atomic_write(args.output, lambda f: f.write(text))
        else:
            sys.stdout.write(text)
    except USER_ERRORS as exc:
        return report_error(exc)
    return 0


def predict_text(args: argparse.Namespace) -> str:
    """The rendered top-k classes of --images among --classnames."""
    classnames = read_classnames(args.classnames)
    paths = image_paths(args.images)
    import promptdiff

    probs = promptdiff.load(args.model_dir, epoch=args.load_epoch).predict(paths, classnames)
    return render(paths, top_k(probs, classnames, args.topk), args.format)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), argv, predict_text)


if __name__ == "__main__":
    sys.exit(main())
