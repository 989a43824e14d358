"""``python -m vera.convert_internvl2 SRC DST``: an original InternVL2 checkpoint to the native format."""

from __future__ import annotations

import json

from vera.errors import VeraError
from vera.options import Command

COMMAND = Command(
    "Convert an original InternVL2 checkpoint (remote-code InternVLChatModel) into a folder that "
    "transformers' InternVLForConditionalGeneration and the hf backend load; see vera.vlm.convert_internvl2.",
    ["convert_src", "convert_dst", "convert_overwrite"],
    prog="python -m vera.convert_internvl2",
)


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    if args.dst.is_dir() and any(args.dst.iterdir()) and not args.overwrite:  # before torch is imported
        raise VeraError(f"{args.dst} is not empty; choose a new folder or pass --overwrite")
    from vera.vlm.convert_internvl2 import convert

    report = convert(args.src, args.dst, overwrite=args.overwrite)
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0
