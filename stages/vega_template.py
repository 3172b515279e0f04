"""Build an offline HTML template for `dvc plots show --html-template` (vega, vega-lite, vega-embed inlined).

    npm install --prefix build/vega --no-audit --no-fund vega@5 vega-lite@5 vega-embed@6
    python stages/vega_template.py --node-modules build/vega/node_modules --out reports/vega_template.html
    dvc plots show --html-template reports/vega_template.html

DVC's default page loads the three libraries from a CDN and renders blank offline. This
template inlines their UMD builds and has no `{scripts}` placeholder, so DVC adds no CDN tag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

LIBRARIES = (("vega", "build/vega.min.js"), ("vega-lite", "build/vega-lite.min.js"),
             ("vega-embed", "build/vega-embed.min.js"))
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>Weight Weaving: DVC plots (offline)</title>
<!-- inlined: @VERSIONS@ -->
@SCRIPTS@
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; }
table { border-spacing: 15px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def inline_script(name: str, source: str) -> str:
    """A <script> element holding `source`; fails if the source would break the template."""
    for placeholder in PLACEHOLDERS:
        if placeholder in source:
            raise ValueError(f"{name}: its source contains the DVC placeholder {placeholder}")
    escaped = source.replace("</script", "<\\/script")
    return f"<script>/* {name} */\n{escaped}\n</script>"


def build_template(node_modules: Path) -> str:
    scripts, versions = [], []
    for package, relative in LIBRARIES:
        path = node_modules / package / relative
        manifest = node_modules / package / "package.json"
        if not path.is_file() or not manifest.is_file():
            raise FileNotFoundError(f"{path} not found: run `npm install --prefix <dir> vega@5 vega-lite@5 "
                                    f"vega-embed@6` and pass <dir>/node_modules as --node-modules")
        versions.append(f"{package}@{json.loads(manifest.read_text())['version']}")
        scripts.append(inline_script(package, path.read_text(encoding="utf8")))
    return PAGE.replace("@VERSIONS@", ", ".join(versions)).replace("@SCRIPTS@", "\n".join(scripts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-modules", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        text = build_template(args.node_modules)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: vega_template: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", suffix=".tmp", dir=args.out.parent)
    with os.fdopen(fd, "w", encoding="utf8") as handle:
        handle.write(text)
    os.replace(tmp, args.out)
    print(f"[vega_template] {args.out} ({len(text) // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
