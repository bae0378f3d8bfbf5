"""Build-time pages generated from the code itself, so the reference cannot drift from it.

- ``reference/cli.md``: every command's ``--help``, from the argparse parser the CLI uses;
- ``reference/exit-codes.md``: the exit-code table, from :data:`harvester.errors.EXIT_CODES`.
"""

from __future__ import annotations

import argparse
from typing import Any

from mkdocs.structure.files import File, Files

from harvester.cli import _parser
from harvester.errors import EXIT_CODES

COLUMNS = 100  # help text wrapped as on a 100-column terminal, whatever the builder's is


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_page() -> str:
    """Every command's help, as ``harvester COMMAND --help`` prints it."""
    parser = _parser()
    parts = [
        "# Command line\n",
        "Generated from the parser the `harvester` command uses: what `--help` prints.\n",
        f"```text\n{parser.format_help()}```\n",
    ]
    for name, sub in _subcommands(parser).items():
        parts.append(f"## `harvester {name}`\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(parts)


def exit_codes_page() -> str:
    """The exit-code table."""
    rows = "\n".join(f"| `{code}` | {meaning} |" for code, meaning in EXIT_CODES.items())
    return (
        "# Exit codes\n\n"
        "Generated from `harvester.errors.EXIT_CODES`, the table the CLI exits by.\n\n"
        f"| exit | meaning |\n| --- | --- |\n{rows}\n"
    )


PAGES = {"reference/cli.md": cli_page, "reference/exit-codes.md": exit_codes_page}


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages to the site."""
    import os

    os.environ["COLUMNS"] = str(COLUMNS)
    for path, page in PAGES.items():
        files.append(File.generated(config, path, content=page()))
    return files
