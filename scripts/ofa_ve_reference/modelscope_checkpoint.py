"""Checkpoints seen from ModelScope's side: written by, and loaded into, its own `OFAModel`.

Why: "our network has ModelScope's state-dict layout" is only proven when
ModelScope's class itself writes weights that we load strictly, and loads ours
strictly (what `OFAModel.from_pretrained` does inside its pipeline). This runs
ModelScope's code with the same import placeholders as the pipeline reference;
tests call it through `reference.worker.ReferenceWorker`, in a process of its own,
so the test process stays clean.

    python -m ofa_ve_reference.modelscope_checkpoint write OUT_DIR [--seed N]
    python -m ofa_ve_reference.modelscope_checkpoint check MODEL_DIR      # prints JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ofa_ve_reference.modelscope_pipeline import install_import_stubs


def _modelscope_ofa() -> tuple[type, type]:
    install_import_stubs()
    from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig
    from modelscope.models.multi_modal.ofa.modeling_ofa import OFAModel

    return OFAConfig, OFAModel


def modelscope_random_state_dict(config_json: Path, seed: int) -> dict[str, torch.Tensor]:
    """ModelScope's own `OFAModel(OFAConfig.from_json_file(config_json))`, seeded and
    diversified exactly like our demo weights (every tensor non-constant)."""
    from ofa_ve_engine.demo_checkpoint import diversify_constant_tensors

    config_cls, model_cls = _modelscope_ofa()
    config = config_cls.from_json_file(str(config_json))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    diversify_constant_tensors(model, seed)
    return model.state_dict()


def write_modelscope_checkpoint(out: Path, seed: int) -> Path:
    """A demo-layout model directory whose weights ModelScope's class produced."""
    from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(out, seed=seed, state_dict_factory=modelscope_random_state_dict)


def loading_report(model_dir: Path) -> dict[str, Any]:
    """How ModelScope's `OFAModel` takes the directory's weights.

    Two loads: `from_pretrained` (what the pipeline does; its loading info) and a
    strict `load_state_dict` into a fresh model built from `config.json`.
    """
    config_cls, model_cls = _modelscope_ofa()
    state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    fresh = model_cls(config_cls.from_json_file(str(model_dir / "config.json")))
    strict_error = None
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as e:
        strict_error = str(e)
    loaded, info = model_cls.from_pretrained(str(model_dir), output_loading_info=True)
    loaded_state = loaded.state_dict()
    differing = sorted(
        k for k, v in state.items() if k in loaded_state and not torch.equal(loaded_state[k], v)
    )
    return {
        "strict_error": strict_error,
        "from_pretrained_missing_keys": sorted(info.get("missing_keys", [])),
        "from_pretrained_unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "from_pretrained_mismatched_keys": sorted(str(k) for k in info.get("mismatched_keys", [])),
        "values_differ_after_from_pretrained": differing,
        "checkpoint_keys": len(state),
        "model_state_keys": len(loaded_state),
        "num_parameters": sum({p.data_ptr(): p.numel() for p in loaded.parameters()}.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ofa_ve_reference.modelscope_checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write a checkpoint from ModelScope's OFAModel")
    write.add_argument("out", type=Path)
    write.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check", help="load MODEL_DIR into ModelScope's OFAModel")
    check.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        if args.command == "write":
            result: Any = str(write_modelscope_checkpoint(args.out, args.seed))
        else:
            result = loading_report(args.model_dir)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
