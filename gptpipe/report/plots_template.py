"""The page `dvc plots show` and `dvc plots diff` fill in, with vega inline so the charts draw offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. DVC lets
a project name its own page (`plots.html_template`); the page must hold `{plot_divs}`, where DVC puts
one `<div>` and one `vegaEmbed('#id', spec)` call per chart. The vega bundle comes from the installed
`vl-convert-python` package (vega, vega-lite and vega-embed in one script that sets `window.vegaEmbed`),
so no JavaScript is copied into git and the version is the one constraints.txt pins. The page leaves
out DVC's `{scripts}` placeholder: that is where DVC would put the CDN tags.
"""

from __future__ import annotations

from pathlib import Path

from gptpipe.errors import UserError
from gptpipe.files import atomic_path

# Written at install time, not committed: .gptpipe/ is ignored.
TEMPLATE_PATH = Path(".gptpipe/plots.html")

_HEAD = '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n    <title>DVC Plot</title>\n'
_TAIL = "\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n"


def vega_bundle() -> str:
    try:
        import vl_convert
    except ImportError as err:
        raise UserError("vl-convert-python is not installed; run `pip install -c constraints.txt -e '.[test]'`") from err
    bundle = vl_convert.javascript_bundle()
    # The bundle goes inside <script>…</script> and through DVC's str.replace of its placeholders.
    if "</script" in bundle.lower() or "{plot_divs}" in bundle or "{scripts}" in bundle:
        raise UserError("vl-convert-python's bundle cannot be inlined (it holds </script> or a DVC placeholder); pin the version in constraints.txt")
    return bundle


def page() -> str:
    return f"{_HEAD}    <script>\n{vega_bundle()}\n    </script>{_TAIL}"


def write_template(path: Path = TEMPLATE_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page(), encoding="utf-8")
    return path
