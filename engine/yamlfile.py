"""YAML files as config.yaml uses them: read safely (duplicate keys, alias bombs and deep nesting refused with
one line) and written back in the same layout (block sections, one line per list and per conv block), and
nested mappings as dotted keys (flatten).
"""
import copy
from pathlib import Path
from typing import Any

import yaml

from engine.editable import decode
from engine.errors import UserError


class UniqueKeys:
    """For PyYAML's safe loaders: a key given twice in one mapping is an error, not the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are refused by PyYAML itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """PyYAML's node, which also keeps its anchor (&name): `key: &x` leaves key empty, and that is named."""
        event = self.peek_event()
        anchor = None if isinstance(event, yaml.AliasEvent) else getattr(event, "anchor", None)
        node = super().compose_node(parent, index)
        if anchor is not None:
            node.anchor = anchor
        return node


class UniqueKeyLoader(UniqueKeys, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """libyaml's parser where PyYAML has it, 15x faster than PyYAML's own: for documents read as plain data."""


class ExplainingLoader(UniqueKeys, yaml.SafeLoader):
    """PyYAML's own parser, for what libyaml's does not give: each value's text as written and its anchor
    (scalar_nodes, text_of), and on an error the line where the problem is (libyaml's can be the text's end)."""



YAML_NODES_MAX = 100_000  # values a config may hold once its aliases (*name) are expanded; config.yaml has ~100



def expanded_size(node: yaml.Node, limit: int, sizes: dict[int, int]) -> int:
    """How many values node holds with every alias expanded, counted without expanding (each node once), or
    more than limit as soon as that is certain: a 1 kB alias bomb would expand to billions."""
    if id(node) not in sizes:
        sizes[id(node)] = limit + 1  # a node that contains itself expands forever
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total += expanded_size(child, limit, sizes)
            if total > limit:
                break
        sizes[id(node)] = total
    return sizes[id(node)]



YAML_DEPTH_MAX = 50  # levels of nesting; config.yaml has 3, and PyYAML's recursive parser dies near 1,000



def check_depth(text: str, where: str) -> None:
    """Refuse a document nested deeper than YAML_DEPTH_MAX, found by PyYAML's scanner (which does not recurse)."""
    depth = 0
    for token in yaml.scan(text, Loader=UniqueKeyLoader):
        if isinstance(token, (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
                              yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)):
            depth += 1
            if depth > YAML_DEPTH_MAX:
                raise UserError(f"{where} is nested more than {YAML_DEPTH_MAX} levels deep; a config needs a few "
                                "levels at most")
        elif isinstance(token, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
            depth -= 1



def load_yaml(text: str, where: str, written: dict[str, yaml.ScalarNode] | None = None) -> Any:
    """yaml.load with unique keys, refusing a document whose aliases expand beyond YAML_NODES_MAX values;
    written, if given, receives scalar_nodes() of the document."""
    check_depth(text, where)
    loader = UniqueKeyLoader(text) if written is None else ExplainingLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and expanded_size(node, YAML_NODES_MAX, {}) > YAML_NODES_MAX:
            raise UserError(f"{where} holds more than {YAML_NODES_MAX:,} values once its aliases (*name) are "
                            "expanded; a config needs a few hundred at most")
        if node is not None and written is not None:
            written.update(scalar_nodes(node))
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def scalar_nodes(node: yaml.Node, prefix: str = "") -> dict[str, yaml.ScalarNode]:
    """Dotted key (list items by index: log.hooks.0) -> the node of each scalar value: its text as written
    (node.value), its style (None plain, ' or " quoted, | or > a block) and the type YAML gave it (node.tag)."""
    if isinstance(node, yaml.ScalarNode):
        return {prefix: node}
    pairs = node.value if isinstance(node, yaml.MappingNode) else enumerate(node.value)
    found = {}
    for key, child in pairs:
        name = str(key.value if isinstance(key, yaml.Node) else key)
        found.update(scalar_nodes(child, f"{prefix}.{name}" if prefix else name))
    return found



def text_of(node: yaml.ScalarNode) -> str:
    """A scalar as its document writes it: `&x` for an anchor with no value, a block scalar's first line (|-)."""
    start, end = node.start_mark, node.end_mark
    if start is None or start.buffer is None:
        return node.value
    text = start.buffer[start.pointer:end.pointer]
    return text.split("\n")[0].split(" #")[0].strip() if node.style in ("|", ">") else text


def parse_yaml(text: str, where: str, written: dict[str, yaml.ScalarNode] | None = None) -> Any:
    """YAML text -> plain data; where names the file or override in messages; written: as load_yaml's."""
    try:
        try:
            return load_yaml(text, where, written)
        except yaml.YAMLError:
            if written is not None:
                raise
            return load_yaml(text, where, {})  # PyYAML's parser: the same error, with the line where it is
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or ""
        detail = f" ({problem})" if "twice" in problem else "; check indentation and colons"
        raise UserError(f"{where} is not valid YAML{line}{detail}") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply to read; a config needs a few levels at most") from None



def read_yaml(path: str | Path, written: dict[str, yaml.ScalarNode] | None = None) -> Any:
    """A YAML file -> plain data, or one UserError naming the file; written: as load_yaml's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing file with --config")
    try:
        text, _ = decode(path.read_bytes(), legacy=False)  # UTF-8, or UTF-16/32 with a byte order mark
    except UnicodeDecodeError as err:
        raise UserError(f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"config file {path} cannot be read ({err.strerror}); check its permissions") from None
    key = (text, written is not None)
    if key not in parsed:
        nodes: dict[str, yaml.ScalarNode] | None = None if written is None else {}
        raw = parse_yaml(text, f"config file {path}", nodes)
        if raw is None:
            raise UserError(f"config file {path} is empty; start from a copy of config.yaml")
        if len(parsed) >= 64:
            parsed.clear()
        parsed[key] = raw, nodes
    raw, nodes = parsed[key]
    if written is not None:
        written.update(nodes)
    return copy.deepcopy(raw)  # the caller's to change


# file text (and whether its nodes were asked for) -> (data, nodes): a run reads config.yaml a dozen times, and
# PyYAML's pure-Python parser, which the nodes need, takes 50 ms a read
parsed: dict[tuple[str, bool], tuple[Any, dict | None]] = {}



class FlowDict(dict):
    """A mapping written on one line, as conv blocks are in config.yaml."""



class Dumper(yaml.SafeDumper):
    """Block style for sections, one line per list and per conv block, like config.yaml."""

    def represent_list(self, data: list) -> yaml.Node:
        items = [FlowDict(x) if isinstance(x, dict) else x for x in data]
        return self.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=not any(
            isinstance(x, dict) for x in data))

    def represent_flow_dict(self, data: FlowDict) -> yaml.Node:
        return self.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


Dumper.add_representer(list, Dumper.represent_list)
Dumper.add_representer(FlowDict, Dumper.represent_flow_dict)


def dump_yaml(data: dict) -> str:
    """data in config.yaml's layout, keys in their order."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=120)


def flatten(node: Any, prefix: str = "") -> dict:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1}; lists stay whole values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for name, child in node.items():
        flat.update(flatten(child, f"{prefix}.{name}" if prefix else name))
    return flat
