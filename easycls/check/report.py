"""The check's report: one verdict per finding, `check.json`, `check.md` and a PNG grid.

Every file goes through `rundir.write_file` (atomic).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.images import UnreadableImage, open_image
from ..rundir import write_file, write_json
from .findings import BLANK_CONTRAST, EXTREME_RATIO, TINY_SIDE

__all__ = ["verdicts", "write_report", "GRID_NAME"]

GRID_NAME = "worst_cases.png"
_IMBALANCE_RATIO = 10  # largest / smallest class beyond which a warning is worth reading
_SHOWN = 10  # examples listed per finding in check.md
_TILE = 96


def _verdict(name: str, status: str, line: str, todo: str = "") -> dict:
    return dict(finding=name, status=status, line=line, todo=todo)


def _group_verdicts(r: dict) -> list[dict]:
    out = []
    n, leaks, conf = len(r["duplicates"]), len(r["leakage"]), len(r["conflicting_labels"])
    out.append(_verdict("leakage", "problem" if leaks else "ok",
                        f"{leaks} duplicate groups cross the train/valid/test splits",
                        "validation and test scores are inflated by images the model trained "
                        "on: remove the copies from one side" if leaks else ""))
    out.append(_verdict("conflicting_labels", "problem" if conf else "ok",
                        f"{conf} duplicate groups carry different labels",
                        "the same picture cannot be both: keep the right label, delete the "
                        "other copy" if conf else ""))
    images = sum(len(g) for g in r["duplicates"])
    out.append(_verdict("duplicates", "warn" if n else "ok",
                        f"{n} groups of exact or near-duplicate images ({images} images)",
                        "a random split puts copies on both sides, and validation then scores "
                        "images the model trained on: train with `easycls fit DATA --split-by "
                        "duplicates`, or delete the copies" if n else ""))
    return out


def _image_verdicts(r: dict) -> list[dict]:
    cases = [("unreadable", "problem", "images cannot be decoded",
              "fit skips them (skipped.txt): replace or delete them"),
             ("tiny", "warn", f"images are under {TINY_SIDE} px on their shorter side",
              "the model sees them upscaled and blurred: find larger originals or drop them"),
             ("extreme", "warn", f"images are more than {EXTREME_RATIO:g} times as wide as high "
              "(or the reverse)", "fit's square centre crop keeps only their middle: crop or "
              "pad them yourself"),
             ("blank", "warn", f"images are one flat colour (contrast under "
              f"{BLANK_CONTRAST:g})", "usually a failed export or a placeholder: delete them")]
    return [_verdict(name, status if r[name] else "ok", f"{len(r[name])} {what}",
                     todo if r[name] else "") for name, status, what, todo in cases]


def _other_verdicts(r: dict) -> list[dict]:
    imb = r["imbalance"]
    ratio = imb["ratio"]
    bad = ratio is None or ratio > _IMBALANCE_RATIO
    line = (f"class {imb['smallest']!r} has no labelled images" if ratio is None else
            f"the largest class has {ratio:g} times the images of the smallest "
            f"({imb['smallest']!r}, {imb['counts'].get(imb['smallest'])})")
    out = [_verdict("imbalance", "warn" if bad else "ok", line,
                    "expect low recall on the small classes: collect more of them, or weigh "
                    "the metrics by class" if bad else "")]
    if r.get("label_issues") is not None:
        n = len(r["label_issues"])
        out.append(_verdict("label_issues", "warn" if n else "ok",
                            f"{n} images whose label the model contradicts "
                            f"({r.get('label_source', 'out-of-fold')})",
                            "review them from the top of the list, fix the wrong labels and "
                            "train again" if n else ""))
    return out


def verdicts(r: dict) -> list[dict]:
    """One verdict per finding: `status` ok / warn / problem, a line, and what to do."""
    return _group_verdicts(r) + _image_verdicts(r) + _other_verdicts(r)


def _overall(found: list[dict]) -> str:
    bad = [v for v in found if v["status"] != "ok"]
    if not bad:
        return "No problems found."
    worst = "problem" if any(v["status"] == "problem" for v in bad) else "warn"
    names = ", ".join(v["finding"].replace("_", " ") for v in bad)
    return f"{'Fix before training' if worst == 'problem' else 'Worth a look'}: {names}."


def _examples(r: dict, name: str) -> list[str]:
    rows = r.get(name) or []
    lines = []
    for row in rows[:_SHOWN]:
        if isinstance(row, list):
            lines.append("- " + ", ".join(f"`{p}`" for p in row[:4]) + (" ..." if len(row) > 4
                                                                         else ""))
        elif "given" in row:
            lines.append(f"- `{row['path']}`: filed as {row['given']!r}, looks like "
                         f"{row['suggested']!r} (score {row['score']:.3f})")
        elif "paths" in row:
            extra = row.get("splits") or [" ".join(x) for x in row.get("labels", [])]
            lines.append("- " + ", ".join(f"`{p}` ({e})" for p, e in
                                          zip(row["paths"][:4], extra[:4])))
        else:
            extra = row.get("reason") or (f"{row['width']}x{row['height']}"
                                          if "width" in row else "")
            lines.append(f"- `{row['path']}`" + (f" ({extra})" if extra else ""))
    if len(rows) > _SHOWN:
        lines.append(f"- ... {len(rows) - _SHOWN} more in check.json")
    return lines


def _markdown(r: dict) -> str:
    found = r["verdicts"]
    md = [f"# Check of {r['source']}", "", f"**{_overall(found)}**", "",
          f"{r['n_images']} images ({r['n_classes']} classes) checked in {r['seconds']:.1f} s. "
          f"Worst cases: `{GRID_NAME}`.", ""]
    for v in found:
        mark = {"ok": "ok", "warn": "WARN", "problem": "PROBLEM"}[v["status"]]
        md += [f"## {v['finding'].replace('_', ' ')}: {mark}", "", v["line"] + "."]
        if v["todo"]:
            md += ["", f"What to do: {v['todo']}.", ""] + _examples(r, v["finding"])
        md.append("")
    return "\n".join(md)


def _tile(ref: str, caption: str) -> Image.Image:
    tile = Image.new("RGB", (_TILE, _TILE + 14), "white")
    try:
        img = open_image(ref, draft=_TILE)
        img.thumbnail((_TILE, _TILE))
        tile.paste(img, ((_TILE - img.width) // 2, (_TILE - img.height) // 2))
    except UnreadableImage:
        ImageDraw.Draw(tile).text((4, _TILE // 2), "unreadable", fill="red")
    ImageDraw.Draw(tile).text((2, _TILE + 1), caption[:16], fill="black")
    return tile


def _name(ref: str) -> str:
    return ref.replace("\\", "/").rsplit("/", 1)[-1]


def _grid_rows(r: dict) -> list[list[tuple[str, str]]]:
    rows = [[(p, f"{s} {_name(p)}") for p, s in zip(g["paths"][:6], g["splits"])]
            for g in r["leakage"][:4]]
    rows += [list(zip(g["paths"][:6], [" ".join(x) for x in g["labels"][:6]]))
             for g in r["conflicting_labels"][:3]]
    rows += [[(p, _name(p)) for p in g[:6]] for g in r["duplicates"][:3]]
    issues = r.get("label_issues") or []
    for start in range(0, min(len(issues), 12), 6):
        rows.append([(x["path"], f"{x['given']}>{x['suggested']}")
                     for x in issues[start:start + 6]])
    odd = r["tiny"][:3] + r["extreme"][:3]
    rows += [[(x["path"], f"{x['width']}x{x['height']}") for x in odd]] if odd else []
    return rows


def _grid_png(r: dict) -> bytes:
    rows = _grid_rows(r) or [[]]
    width = max(1, max(len(row) for row in rows)) * _TILE
    sheet = Image.new("RGB", (width, len(rows) * (_TILE + 16)), (235, 235, 235))
    for y, row in enumerate(rows):
        for x, (ref, caption) in enumerate(row):
            sheet.paste(_tile(ref, caption), (x * _TILE, y * (_TILE + 16)))
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def write_report(out: str | Path, result: dict) -> Path:
    """Write `check.json`, `check.md` and the worst-cases grid into `out`."""
    out = Path(out)
    write_json(out / "check.json", result)
    write_file(out / "check.md", _markdown(result))
    write_file(out / GRID_NAME, _grid_png(result))
    return out
