"""Render the settings table of README.md from :class:`app.settings.Settings`.

``python -m app.settings_doc --write README.md`` replaces the text between the settings markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

from app.settings import ENV_PREFIX, Settings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        # Computed where the process runs (the host's zone) or a fresh container: say so, not this host's value.
        return "(the host's)" if field.default_factory.__name__.startswith("host_") else f"`{field.default_factory()}`"
    value = field.default
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def render_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(name)} | {description} |")
    return "\n".join(rows)


def update(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"] and len(args) == 2:
        path = Path(args[1])
        path.write_text(update(path.read_text()))
    else:
        print(render_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
