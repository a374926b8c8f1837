"""where data lives; download public corpora (`scratchlm data where|list|download`)."""

from __future__ import annotations

import argparse

from scratchlm.data import sources


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    where = verbs.add_parser("where", help="print the data folder and why it was chosen",
                             description="Print the data folder ($SCRATCHLM_DATA, ../shared/data, or the download "
                                         "cache) and which rule chose it.")
    where.set_defaults(func=where_cmd)

    ls = verbs.add_parser("list", help="list the corpora `data download` can fetch")
    ls.set_defaults(func=list_cmd)

    dl = verbs.add_parser("download", help="download corpora from the Hugging Face hub",
                          description="Download registered corpora (see `scratchlm data list`). Finished files are "
                                      "skipped and interrupted downloads resume. $HF_ENDPOINT sets a mirror.")
    dl.add_argument("names", nargs="+", metavar="NAME", help="registry names, e.g. tinystories-valid")
    dl.add_argument("--dest", metavar="DIR", help="folder to download into (default: the download cache, "
                                                  "$SCRATCHLM_CACHE or ~/.cache/scratchlm/data)")
    dl.add_argument("--force", action="store_true", help="download again even when the file is already there")
    dl.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    dl.set_defaults(func=download_cmd)


def where_cmd(args: argparse.Namespace) -> int:
    root, why = sources.locate_data_root()
    print(root)
    print(f"  chosen because: {why}")
    print(f"  downloads go to: {sources.download_dir()}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    rows = [("NAME", "SIZE", "HERE", "SOURCE", "DESCRIPTION")]
    for d in sources.REGISTRY.values():
        here = "yes" if (sources.download_dir() / d.filename).exists() else "-"
        rows.append((d.name, d.approx_size, here, f"{d.repo}/{d.filename}", d.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def download_cmd(args: argparse.Namespace) -> int:
    for name in args.names:
        sources.get_dataset(name)  # fail on a typo before spending minutes on the names before it
    for name in args.names:
        print(sources.download(name, args.dest, force=args.force, progress=not args.no_progress))
    return 0
