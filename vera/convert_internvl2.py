"""``python -m vera.convert_internvl2 SRC DST``; see ``vera.vlm.convert_internvl2``."""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("convert_internvl2"))
