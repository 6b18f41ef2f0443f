"""matplotlib figures drawn as sanitised inline SVG: the one plot machinery of the report, ship and series.

Text is written as real SVG <text> elements (svg.fonttype "none") so a page stays searchable and
small. Every SVG is parsed and re-serialised before it is inlined: that drops comments (matplotlib
writes each label into a comment, where a crafted task name could close it), drops anything
scriptable, and prefixes ids so several plots can share one page.

Imports matplotlib: import this module where a plot is drawn, not where a package is loaded.
"""

from __future__ import annotations

import io
import re
import threading
import xml.etree.ElementTree as ET

import matplotlib
from matplotlib.figure import Figure

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

# rc_context changes matplotlib's process-wide rcParams: the watcher daemon may report two runs at once.
LOCK = threading.Lock()
BASE_RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def render_svg(fig: Figure, name: str) -> str:
    """`fig` as a sanitised <svg> element whose ids start with `name`."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, **BASE_RC}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    return sanitise_svg(buf.getvalue(), prefix=name)


def figure(width: float, height: float) -> Figure:
    """A figure of `width` × `height` inches in the shared style, not registered with pyplot."""
    with matplotlib.rc_context(BASE_RC):
        return Figure(figsize=(width, height), layout="constrained")


# <metadata> is matplotlib's RDF block: a date and outside URLs, and nothing a reader needs.
_DROPPED_TAGS = {"metadata", "script", "foreignObject", "iframe", "object", "embed", "a", "animate", "set", "image"}
_URL_REF = re.compile(r"url\(#([^)]+)\)")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def sanitise_svg(svg: str, prefix: str) -> str:
    """Parse, drop comments/scriptable parts, prefix ids, and return the bare <svg> element."""
    root = ET.fromstring(svg.encode())  # the default parser drops comments and the doctype
    for parent in list(root.iter()):
        for child in list(parent):
            if _local(child.tag) in _DROPPED_TAGS:
                parent.remove(child)
    for el in root.iter():
        for attr in list(el.attrib):
            name = _local(attr)
            value = el.attrib[attr]
            if name.lower().startswith("on"):
                del el.attrib[attr]
            elif name == "id":
                el.attrib[attr] = f"{prefix}-{value}"
            elif name == "href":
                if value.startswith("#"):
                    el.attrib[attr] = f"#{prefix}-{value[1:]}"
                else:
                    del el.attrib[attr]
            elif "url(#" in value:
                el.attrib[attr] = _URL_REF.sub(lambda m: f"url(#{prefix}-{m.group(1)})", value)
    for style in root.iter(f"{{{SVG_NS}}}style"):
        # matplotlib's only stylesheet sets stroke-linejoin/linecap; nothing in it may load a resource.
        if style.text and ("@import" in style.text or "url(" in style.text):
            style.text = ""
    root.set("role", "img")
    root.set("class", f"plot plot-{prefix}")
    return ET.tostring(root, encoding="unicode")
