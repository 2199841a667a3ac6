"""A model with a real model's architecture and tokenizer but random weights, for speed measurements where
the weights cannot travel (a lent GPU machine reaches no hub and takes 64 MiB of files): decoding speed
does not depend on the weights when EOS is ignored.

    python benchmarks/random_model.py CONFIG_DIR OUT_DIR   # CONFIG_DIR: config.json + tokenizer files
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config_dir))
    model.save_pretrained(args.out_dir)
    for path in args.config_dir.iterdir():
        if path.name != "config.json" and path.is_file():
            shutil.copy(path, args.out_dir / path.name)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{type(model).__name__}: {millions:.1f}M parameters -> {args.out_dir}")


if __name__ == "__main__":
    main()
