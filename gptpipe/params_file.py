"""Reading a params file as DVC reads it: a YAML mapping whose keys appear once.

PyYAML keeps the last of two equal keys silently; DVC's loader refuses the file. A check that
passed a file `dvc repro` then rejects (or that ran with the other value) would be no check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gptpipe.errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: Path, error: type[UserError] = UserError) -> dict[str, Any]:
    """The file's mapping ({} when empty); any other content, or no readable file, is `error` in one line."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise error(f"{path}: no such params file") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not a params file; name the YAML file (e.g. params.yaml)") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; save the params file as UTF-8") from None
    except yaml.constructor.ConstructorError as err:
        line = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        raise error(f"{path}: {err.problem}{line}; keep one of them (DVC refuses such a file too)") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: holds a {type(raw).__name__}, not a mapping of sections (model:, train:, ...)")
    return raw
