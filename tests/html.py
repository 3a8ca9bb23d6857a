"""Reading pages the way a person sees them: elements by id, and their text."""

import re
from html.parser import HTMLParser

VOID = {"br", "img", "input", "meta", "link", "hr", "source", "wbr", "area", "base", "col", "embed", "track"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def id(self):
        return self.attrs.get("id")

    def text(self):
        """The text as shown: <br> is a line break."""
        parts = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif child.tag == "br":
                parts.append("\n")
            else:
                parts.append(child.text())
        return "".join(parts)

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find(self, predicate):
        return next((node for node in self.iter() if predicate(node)), None)

    def by_id(self, element_id):
        return self.find(lambda node: node.id == element_id)

    def all(self, predicate):
        return [node for node in self.iter() if predicate(node)]

    def by_class(self, name):
        return self.all(lambda node: name in node.attrs.get("class", "").split())


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def csrf_token(html):
    """The CSRF token of a page's form."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def parse(html):
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def rows(html):
    """The message rows of a page or fragment: [(id, handle, text)], in page order."""
    document = parse(html)
    found = []
    for row in document.all(lambda node: (node.id or "").startswith("message-")):
        handle = row.find(lambda node: "handle" in node.attrs.get("class", "").split())
        text = row.find(lambda node: "text" in node.attrs.get("class", "").split())
        found.append((int(row.id.split("-", 1)[1]), handle.text(), text.text()))
    return found
