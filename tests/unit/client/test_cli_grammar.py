"""The CLI's one grammar: every command documented with an example, shared flags, table and JSON shapes."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator

from skald.cli import build_parser
from skald.commands.grammar import render_rows


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaves(sub, (*path, name))
    if parser.get_default("func") is not None:
        yield path, parser


def test_every_command_has_a_description_examples_and_argument_help() -> None:
    found = list(leaves(build_parser()))
    assert len(found) >= 20
    for path, parser in found:
        assert parser.description and len(parser.description) > 10, path
        assert parser.epilog and parser.epilog.startswith("examples:\n  skald " + path[0]), path
        for action in parser._actions:
            assert action.help, (path, action.dest)


def test_client_commands_share_connection_output_and_document_grammar() -> None:
    for path, parser in leaves(build_parser()):
        flags = {opt for action in parser._actions for opt in action.option_strings}
        if "--url" not in flags:
            continue
        assert {"--profile", "--url", "--token"} <= flags, path
        positionals = [a.dest for a in parser._actions if not a.option_strings]
        if path != ("sync", "status"):  # status names a replica file, which knows its document
            assert positionals[0] == "db", path  # the document is always the first argument
        assert "--db" not in flags, path
        output = next((a for a in parser._actions if "--output" in a.option_strings), None)
        if output is not None:
            assert "--pretty" in flags, path


def test_table_has_header_rule_right_aligned_numbers_and_count() -> None:
    out = io.StringIO()
    render_rows(["id", "name", "price"], [[1, "milk", 1.25], [10, "bread", None], [200, None, 12]], "table", out=out)
    assert out.getvalue().splitlines() == [
        " id  name   price",
        "---  -----  -----",
        "  1  milk    1.25",
        " 10  bread   NULL",
        "200  NULL      12",
        "(3 rows)",
    ]


def test_json_is_one_document_per_line_unless_pretty() -> None:
    rows = [[1, {"a": [1, 2]}], [2, "x"]]
    out = io.StringIO()
    render_rows(["id", "v"], rows, "json", out=out)
    assert out.getvalue().count("\n") == 1 and json.loads(out.getvalue()) == [
        {"id": 1, "v": {"a": [1, 2]}},
        {"id": 2, "v": "x"},
    ]
    pretty = io.StringIO()
    render_rows(["id", "v"], rows, "json", pretty=True, out=pretty)
    assert json.loads(pretty.getvalue()) == json.loads(out.getvalue()) and pretty.getvalue().count("\n") > 2
    nd = io.StringIO()
    render_rows(["id", "v"], rows, "ndjson", out=nd)
    assert [json.loads(line) for line in nd.getvalue().splitlines()] == json.loads(out.getvalue())
    csv_out = io.StringIO()
    render_rows(["id", "v"], [[1, None], [2, 'say "hi"']], "csv", out=csv_out)
    assert csv_out.getvalue() == 'id,v\n1,\n2,"say ""hi"""\n'
