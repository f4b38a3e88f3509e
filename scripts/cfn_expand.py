"""A template as CloudFormation runs it: AWS::LanguageExtensions (Fn::ForEach) expanded.

checkov 3.3 and moto 5.2 do not know the transform: checkov sees no resource in a
Fn::ForEach, and moto cannot create one. Both read infra/ through this instead, which expands
the template with cfn-lint's implementation of the transform, the one that lints it.

Run as `python scripts/cfn_expand.py OUT_DIR TEMPLATE...`: writes each template, expanded, as
JSON of the same name in OUT_DIR, for checkov.
"""

import json
import sys
from pathlib import Path
from typing import Any

from cfnlint.decode import decode
from cfnlint.template import Template
from cfnlint.template.transforms._language_extensions import language_extension

TRANSFORM = "AWS::LanguageExtensions"


def expand(template: dict[str, Any]) -> dict[str, Any]:
    """The template with the transform applied and no longer declared; as it was without it."""
    declared = template.get("Transform", [])
    declared = declared if isinstance(declared, list) else [declared]
    if TRANSFORM not in declared:
        return template
    errors, expanded = language_extension(Template("", template, ["us-east-1"]))
    if errors:
        raise ValueError(f"{TRANSFORM}: {errors[0].message}")
    expanded = dict(expanded)
    rest = [name for name in declared if name != TRANSFORM]
    if rest:
        expanded["Transform"] = rest
    else:
        del expanded["Transform"]
    return expanded


def main(out_dir: str, *paths: str) -> None:
    for path in map(Path, paths):
        template, errors = decode(str(path))
        if errors:
            sys.exit(f"{path}: {errors[0].message}")
        target = Path(out_dir) / f"{path.stem}.json"
        target.write_text(json.dumps(expand(template), indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/cfn_expand.py OUT_DIR TEMPLATE...")
    main(*sys.argv[1:])
