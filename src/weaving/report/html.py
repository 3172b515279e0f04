"""`reports/index.html`: one self-contained page (figures inlined as base64 PNG, no network)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from weaving.report.claims import Claim, claims_html
from weaving.report.paper import Comparison
from weaving.report.tables import Table

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{margin-top:2.5rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.85rem}nav a{margin-right:1rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#444;font-size:.9rem}
.verdict{font-weight:bold;white-space:nowrap}.holds{color:#007a4d}.does-not-hold{color:#b3380b}
.mixed{color:#8a6d00}.not-testable{color:#666}
"""


def index_html(title: str, intro: Sequence[str], claims: list[Claim], tables: list[Table],
               figures: dict[str, bytes], captions: dict[str, str], comparison: Comparison) -> str:
    """The report page: claims, tables, figures and the paper comparison, in that order."""
    figure_blocks = []
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        caption = html.escape(captions.get(name, name))
        figure_blocks.append(f"<figure id=\"{html.escape(name)}\"><img alt=\"{caption}\" "
                             f"src=\"data:image/png;base64,{data}\"><figcaption>{caption} "
                             f"(<code>figures/{html.escape(name)}</code>)</figcaption></figure>")
    table_links = "".join(f"<li><a href=\"#{t.name}\">{html.escape(t.title)}</a></li>" for t in tables)
    comparison_html = "".join(f"<p>{html.escape(p.replace('**', ''))}</p>" for p in comparison.paragraphs)
    comparison_html += "".join(t.to_html() for t in comparison.tables)
    intro_html = "".join(f"<p>{html.escape(p)}</p>" for p in intro)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
{intro_html}
<nav><a href="#claims">Claims</a><a href="#tables">Tables</a><a href="#figures">Figures</a>
<a href="#paper">Paper comparison</a></nav>
<h2 id="claims">Claims of the paper, checked</h2>
{claims_html(claims)}
<h2 id="tables">Tables</h2>
<ul>{table_links}</ul>
{''.join(t.to_html() for t in tables)}
<h2 id="figures">Figures</h2>
{''.join(figure_blocks)}
<h2 id="paper">Comparison with the paper</h2>
{comparison_html}
</body></html>
"""
