"""Extract English prose from the official Python HTML docs into corpus.jsonl.xz.

Rerun (from the repository root, after `apt-get install python3.11-doc`):

    python data/pydocs/extract.py /usr/share/doc/python3.11/html

Standard library only. For every HTML page it keeps the text of the Sphinx main
body (<div class="body" role="main">), drops code blocks (<pre>, div.highlight*),
tables of contents, permalink markers and scripts, and joins block elements as
paragraphs separated by "\\n\\n". Pages are taken in a fixed section order (see
SECTIONS), sorted by id inside each section, whole documents only, until the
corpus passes MIN_CHARS characters. Output is deterministic (sorted JSON keys,
lzma preset 9), so the same input gives a byte-identical file.
"""
import html.parser, json, lzma, os, re, sys

SECTIONS = ["tutorial/", "howto/", "faq/", "reference/", "whatsnew/", "library/"]
MIN_CHARS = 3_050_000   # ~700k MiniLM (BERT uncased) tokens for this source
MIN_DOC_CHARS = 500
SKIP_PAGES = re.compile(r"genindex(-.*)?|search|py-modindex")  # index pages
BLOCK = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt",
         "dd", "dl", "ul", "ol", "blockquote", "table", "tr", "caption", "figure",
         "figcaption", "aside", "hr", "br"}
SKIP_TAGS = {"pre", "script", "style", "nav"}
CELL = "\x1f"               # marks a table cell boundary
LABEL = "\x1e"              # ends an admonition title: "Note: <body>"
SKIP_CLASSES = ("highlight", "toctree-wrapper", "contents", "headerlink", "sphinxsidebar")


class Extractor(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title, self.in_title = "", False
        self.body_depth = 0      # >0 while inside the main body div
        self.skip = None         # [tag, nesting depth] of the element being skipped
        self.parts = []
        self.tables = 0          # table nesting: rows become one paragraph
        self.label = False       # inside an admonition title ("Note", "See also")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "title":
            self.in_title = True
        if self.skip:
            if tag == self.skip[0]:
                self.skip[1] += 1
            return
        if not self.body_depth:
            if tag == "div" and a.get("role") == "main":
                self.body_depth = 1
            return
        if tag == "div":
            self.body_depth += 1
        if tag in SKIP_TAGS or any(c.startswith(SKIP_CLASSES) for c in classes):
            self.skip = [tag, 1]
            if tag == "div":
                self.body_depth -= 1   # its end tag is consumed while skipping
            return
        if tag == "table":
            self.tables += 1
        if tag == "p" and "admonition-title" in classes:
            self.label = True
        if tag in ("td", "th"):
            self.parts.append(CELL)
        elif tag in BLOCK:
            self.parts.append("\n\n" if not self.tables or tag == "tr" else " ")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if self.skip:
            if tag == self.skip[0]:
                self.skip[1] -= 1
                if not self.skip[1]:
                    self.skip = None
            return
        if not self.body_depth:
            return
        if tag == "div":
            self.body_depth -= 1
        if tag == "table":
            self.tables -= 1
        if tag == "p" and self.label:
            self.label = False
            self.parts.append(LABEL)
        elif tag in BLOCK:
            self.parts.append("\n\n" if not self.tables or tag == "tr" else " ")

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif self.body_depth and not self.skip:
            self.parts.append(data)

    def text(self):
        raw = re.sub(LABEL + r"\s*", ": ", "".join(self.parts).replace("¶", ""))
        paras = []
        for p in raw.split("\n\n"):
            cells = (re.sub(r"\s+", " ", c).strip() for c in p.split(CELL))
            paras.append(" | ".join(c for c in cells if c))
        return "\n\n".join(p for p in paras if p)


def extract(path):
    p = Extractor()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    p.close()
    title = re.sub(r"\s+", " ", p.title).split(" — Python ")[0].strip()
    return title, p.text()


def main(root, out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl.xz")):
    docs, total = [], 0
    for section in SECTIONS:
        ids = sorted(os.path.relpath(os.path.join(d, f), root)[:-5]
                     for d, _, fs in os.walk(os.path.join(root, section))
                     for f in fs if f.endswith(".html"))
        for doc_id in ids:
            if total >= MIN_CHARS:
                break
            if SKIP_PAGES.fullmatch(os.path.basename(doc_id)):
                continue
            title, text = extract(os.path.join(root, doc_id + ".html"))
            if len(text) < MIN_DOC_CHARS:
                continue
            docs.append({"id": doc_id, "title": title, "text": text})
            total += len(text)
    data = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in docs)
    with lzma.open(out, "wb", preset=9) as f:
        f.write(data.encode("utf-8"))
    print(f"{len(docs)} documents, {total} characters -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
