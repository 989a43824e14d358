"""Fetch the authors' released artifacts into the Data/ layout, resumably, and check them.

    python Data/download.py [--dataset ucf|xd|all] [--what annotations,prompts,scores,features] [--dest Data/]

annotations, prompts: from the authors' repository (vera-framework/VERA), each
file checked against its pinned SHA-256. scores, features: the authors'
Google Drive archives (initial scores with InternVL2; ImageBind features),
unpacked into <dest>/scores/<dataset>/<key>.json and
<dest>/features/<dataset>/<key>.npy, and checked against the test annotations:
one file per test video, segment counts that agree. Names that differ from the
annotation keys are mapped and reported; anything missing or malformed is
listed, and in <dest>/download_report.json. Rerunning resumes partial files
and skips verified ones. --mirror URL fetches everything from
URL/github/vera-framework/VERA/<commit>/<path> and URL/drive/<file id>.
Exit status: 0 all verified, 1 something missing or malformed, 2 an error.
"""

from __future__ import annotations

from vera.options import Command
from vera.constants import DATASETS

COMMAND = Command(__doc__, [
    "download_dataset", "download_what", "dest", "mirror", "download_retries", "no_progress",
], prog="download.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.data.download import REPORT_NAME, fetch_released

    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    outcomes = fetch_released(args.dest, datasets, args.what, mirror=args.mirror, retries=args.retries,
                              progress=not args.no_progress)
    problems = sum(outcome.problems for outcome in outcomes)
    report = args.dest / REPORT_NAME
    if problems:
        print(f"{problems} problems (above; every file listed in {report})")
        return 1
    print(f"all {len(outcomes)} items in place and checked under {args.dest} (report: {report})")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
