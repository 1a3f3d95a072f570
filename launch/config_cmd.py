"""Print a merged config with every field's documentation: the reference of every key.

    tubelet config pretrain                              # the defaults, every key documented
    tubelet config pretrain --config vit_b_k400          # a preset (name or path), merged
    tubelet config finetune --config synth_vit head.mixup=0.8 --brief   # values only, as YAML

The output is valid YAML (documentation as comments), so it can be saved and passed back with
``--config``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from functools import lru_cache

import yaml

STAGES = ("pretrain", "finetune")


@lru_cache(maxsize=None)
def _own_field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of the attribute docstrings written in ``cls``'s own body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config dataclass, subclasses overriding their bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _yaml_item(key: str, value) -> str:
    """``key: value`` on one line (flow style), as ``yaml.safe_load`` reads it back."""
    dumped = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return dumped[1:-1]                                   # drop only the outer mapping's braces


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {ln}".rstrip() for ln in text.replace("``", "`").splitlines()]


def render(cfg, brief: bool = False) -> str:
    """``cfg`` (a config dataclass instance) as YAML, each key preceded by its documentation."""
    from pretrain.config import to_dict

    plain = to_dict(cfg)                                   # the values as config.yaml writes them
    lines: list[str] = []
    top_docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not brief and top_docs.get(f.name):
            lines += _comment(top_docs[f.name], "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{f.name}:")
            docs = field_docs(type(value))
            for g in dataclasses.fields(value):
                if not brief and docs.get(g.name):
                    lines += _comment(docs[g.name], "  ")
                lines.append("  " + _yaml_item(g.name, plain[f.name][g.name]))
            if not brief:
                lines.append("")
        else:
            lines.append(_yaml_item(f.name, plain[f.name]))
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="which command's config")
    p.add_argument("--config", metavar="FILE", help="preset name or YAML path to merge (default: the defaults)")
    p.add_argument("--brief", action="store_true", help="values only, no documentation")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def config_class(stage: str) -> type:
    if stage == "pretrain":
        from pretrain.config import PretrainConfig

        return PretrainConfig
    from finetune.config import FinetuneConfig

    return FinetuneConfig


def run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config

    cfg = load_config(config_class(args.stage), args.config, args.overrides)
    print(render(cfg, brief=args.brief), end="")
    return 0
